"""Output metrics: exact values on constructed frames, and the properties PSNR/SSIM promise."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cosmos_pipeline.metrics import (
    conditioning_fidelity,
    frame_statistics,
    output_metrics,
    psnr,
    ssim,
)

RNG = np.random.default_rng(0)


def constant(value: int, frames: int = 5, size: tuple[int, int] = (32, 48)) -> np.ndarray:
    return np.full((frames, *size, 3), value, dtype=np.uint8)


def noise(frames: int = 5, size: tuple[int, int] = (32, 48)) -> np.ndarray:
    return RNG.integers(0, 256, (frames, *size, 3), dtype=np.uint8)


def test_a_frozen_video_is_perfectly_consistent_and_flicker_free() -> None:
    metrics = output_metrics(constant(128))
    assert metrics["temporal_consistency"] == 1.0
    assert metrics["flicker"] == 0.0
    assert metrics["sharpness"] == 0.0
    assert metrics["exposure"] == pytest.approx(128 / 255, abs=1e-3)


def test_flicker_measures_brightness_pumping() -> None:
    pumping = np.concatenate([constant(100, 1), constant(140, 1), constant(100, 1)])
    metrics = output_metrics(pumping)
    assert metrics["flicker"] == pytest.approx(40, abs=0.1)
    assert metrics["temporal_consistency"] == pytest.approx(1 - 40 / 255, abs=1e-3)


def test_clipping_and_exposure() -> None:
    assert output_metrics(constant(0))["clip_low"] == 1.0
    assert output_metrics(constant(255))["clip_high"] == 1.0
    assert output_metrics(constant(128))["clip_low"] == output_metrics(constant(128))["clip_high"] == 0.0


def test_sharp_detail_scores_higher_than_flat() -> None:
    checker = (np.indices((32, 48)).sum(axis=0) % 2 * 255).astype(np.uint8)
    sharp = np.repeat(checker[None, :, :, None], 3, axis=3)
    assert output_metrics(sharp)["sharpness"] > output_metrics(constant(128, 1))["sharpness"]


def test_an_image_has_no_temporal_metrics() -> None:
    assert "temporal_consistency" not in output_metrics(noise(1))
    assert "flicker" not in output_metrics(noise(1))


def test_frame_statistics_are_per_frame() -> None:
    stats = frame_statistics(noise(4))
    assert all(values.shape == (4,) for values in stats.values())
    assert math.isnan(stats["diff_prev"][0]) and not np.isnan(stats["diff_prev"][1:]).any()


def test_psnr_known_value_and_identity() -> None:
    a = constant(100)
    assert psnr(a, a) == math.inf
    assert psnr(a, constant(110)) == pytest.approx(10 * math.log10(255**2 / 100))


def test_ssim_is_one_for_identical_and_low_for_unrelated() -> None:
    a = noise()
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, noise()) < 0.1


def test_conditioning_fidelity_compares_the_first_frames() -> None:
    video = noise(9)
    perfect = conditioning_fidelity(video[:1], video)
    assert perfect["conditioning_psnr"] == math.inf and perfect["conditioning_ssim"] == pytest.approx(1.0)
    assert conditioning_fidelity(noise(1), video)["conditioning_ssim"] < 0.1


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(noise(1), noise(2))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(noise(1, (8, 8)), noise(1, (8, 8)))


frames = arrays(np.uint8, (2, 16, 16, 3))


@settings(max_examples=25, deadline=None)
@given(frames, frames)
def test_psnr_and_ssim_are_symmetric_and_bounded(a: np.ndarray, b: np.ndarray) -> None:
    assert psnr(a, b) == psnr(b, a)
    assert ssim(a, b) == pytest.approx(ssim(b, a))
    assert -1.0 - 1e-9 <= ssim(a, b) <= 1.0 + 1e-9


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, (3, 12, 12, 3)), st.integers(1, 60))
def test_brightening_lowers_psnr_monotonically(a: np.ndarray, delta: int) -> None:
    base = a.astype(np.int16).clip(0, 195)
    small, large = (base + delta).astype(np.uint8), (base + delta + 1).astype(np.uint8)
    assert psnr(base.astype(np.uint8), large) < psnr(base.astype(np.uint8), small)
