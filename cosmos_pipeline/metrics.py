"""Output quality figures that need no downloaded model: plain numpy over uint8 RGB frames.

They do not judge realism; they catch what goes wrong in operation and let variants be compared on
the same seeds: a frozen or jittering video (temporal consistency, flicker), a blurred one
(sharpness), a black, white or clipped one (exposure, clipping), and for Image2World/Video2World
whether the generated conditioning frames reproduce the input (PSNR/SSIM).
"""

import numpy as np

CLIP_LOW, CLIP_HIGH = 2, 253  # luma levels counted as crushed shadows / blown highlights
# SSIM as Wang et al. (2004): an 11-tap Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03.
SSIM_SIGMA, SSIM_RADIUS, SSIM_K1, SSIM_K2 = 1.5, 5, 0.01, 0.03
PEAK = 255.0


def luma(frames: np.ndarray) -> np.ndarray:
    """BT.601 luma in [0, 255] as float32, one channel less than `frames` (..., H, W, 3)."""
    return frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _laplacian_variance(y: np.ndarray) -> np.ndarray:
    """Variance of the 4-neighbour Laplacian per frame of (T, H, W) luma: high for sharp detail."""
    lap = -4 * y[:, 1:-1, 1:-1] + y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:]
    return lap.reshape(lap.shape[0], -1).var(axis=1)


def frame_statistics(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame figures of (T, H, W, 3) uint8 frames, each an array of length T.

    `diff_prev` is the mean absolute luma change from the previous frame (NaN for the first).
    """
    y = luma(frames)
    flat = y.reshape(y.shape[0], -1)
    diff = np.abs(np.diff(flat, axis=0)).mean(axis=1)
    return {
        "mean_luma": flat.mean(axis=1),
        "std_luma": flat.std(axis=1),
        "sharpness": _laplacian_variance(y),
        "clip_low": (flat <= CLIP_LOW).mean(axis=1),
        "clip_high": (flat >= CLIP_HIGH).mean(axis=1),
        "diff_prev": np.concatenate([[np.nan], diff]).astype(np.float32),
    }


def output_metrics(frames: np.ndarray) -> dict[str, float]:
    """Summary figures of one output; the temporal ones only for videos.

    - `temporal_consistency`: 1 - mean |frame-to-frame luma change| / 255 (1 = frozen).
    - `flicker`: mean |change of a frame's mean luma| in luma levels; global brightness pumping,
      which motion alone hardly causes.
    """
    stats = frame_statistics(frames)
    metrics = {
        "exposure": float(stats["mean_luma"].mean() / PEAK),
        "contrast": float(stats["std_luma"].mean() / PEAK),
        "sharpness": float(stats["sharpness"].mean()),
        "clip_low": float(stats["clip_low"].mean()),
        "clip_high": float(stats["clip_high"].mean()),
    }
    if frames.shape[0] > 1:
        metrics["temporal_consistency"] = float(1.0 - np.nanmean(stats["diff_prev"]) / PEAK)
        metrics["flicker"] = float(np.abs(np.diff(stats["mean_luma"])).mean())
    return metrics


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all pixels and channels; inf for identical inputs."""
    _check_pair(reference, test)
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(PEAK**2 / mse)


def _gaussian_blur(y: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter over the last two axes, valid region only."""
    taps = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    kernel = np.exp(-(taps**2) / (2 * SSIM_SIGMA**2))
    kernel /= kernel.sum()
    size = kernel.size
    rows = np.lib.stride_tricks.sliding_window_view(y, size, axis=-1) @ kernel
    return np.lib.stride_tricks.sliding_window_view(rows, size, axis=-2) @ kernel


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean structural similarity of the luma of two (..., H, W, 3) uint8 arrays; 1 for identical."""
    _check_pair(reference, test)
    if min(reference.shape[-3:-1]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"SSIM needs frames of at least {2 * SSIM_RADIUS + 1} pixels a side")
    x, y = luma(reference).astype(np.float64), luma(test).astype(np.float64)
    c1, c2 = (SSIM_K1 * PEAK) ** 2, (SSIM_K2 * PEAK) ** 2
    mu_x, mu_y = _gaussian_blur(x), _gaussian_blur(y)
    var_x = _gaussian_blur(x * x) - mu_x**2
    var_y = _gaussian_blur(y * y) - mu_y**2
    cov = _gaussian_blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def conditioning_fidelity(conditioning: np.ndarray, frames: np.ndarray) -> dict[str, float]:
    """How closely the first generated frames reproduce the (T, H, W, 3) frames they were conditioned on."""
    generated = frames[: conditioning.shape[0]]
    return {
        "conditioning_psnr": psnr(conditioning, generated),
        "conditioning_ssim": ssim(conditioning, generated),
    }


def _check_pair(reference: np.ndarray, test: np.ndarray) -> None:
    if reference.shape != test.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {test.shape}")
    if reference.dtype != np.uint8 or test.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {reference.dtype} and {test.dtype}")
