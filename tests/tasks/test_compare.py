"""Side-by-side comparison media."""

from pathlib import Path

import numpy as np

from cosmos_pipeline.media import read_video, write_image, write_video
from tasks.compare import LABEL_HEIGHT, Case, side_by_side, write_comparison


def test_tiles_are_labelled_and_stacked_left_to_right() -> None:
    a = np.zeros((3, 32, 48, 3), np.uint8)
    b = np.full((4, 32, 48, 3), 255, np.uint8)
    combined = side_by_side({"pre-trained": a, "post-trained": b})
    assert combined.shape == (3, 32 + LABEL_HEIGHT, 96, 3)  # cut to the shorter clip
    assert (combined[:, LABEL_HEIGHT:, :48] == 0).all() and (combined[:, LABEL_HEIGHT:, 48:] == 255).all()
    band = combined[0, :LABEL_HEIGHT, :48]
    assert band.max() > 200 and band.min() < 40  # white text on a dark band


def test_comparison_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    videos = [
        write_video(rng.integers(0, 255, (5, 32, 48, 3), dtype=np.uint8), tmp_path / f"{v}.mp4") for v in "ab"
    ]
    cases = [Case("asset", label, 7, path, f"run-{label}") for label, path in zip("ab", videos, strict=True)]
    out = write_comparison(cases, tmp_path / "cmp")
    assert out.name == "asset-seed7.mp4" and read_video(out).shape == (5, 32 + LABEL_HEIGHT, 96, 3)
    images = [
        write_image(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8), tmp_path / f"{v}.png") for v in "ab"
    ]
    cases = [Case("still", label, 1, path, "r") for label, path in zip("ab", images, strict=True)]
    assert write_comparison(cases, tmp_path / "cmp").suffix == ".png"
