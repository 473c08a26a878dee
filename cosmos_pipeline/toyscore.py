"""Scoring videos of the toy world against what their prompt says: plain numpy over uint8 frames.

Toy-world objects are saturated and their backgrounds are not, so an object's pixels are the
saturated ones, and its colour is the nearest palette colour. Tracking the pixels of one colour
gives the object's centre per frame, and the centre's path gives its motion. A video adheres to its
prompt when every object it names shows the right colour and the right motion.
"""

import numpy as np

from cosmos_pipeline.metrics import conditioning_fidelity
from cosmos_pipeline.toyworld import ASPECT, PALETTE, ToyTruth, parse_prompt

SATURATION_MIN, VALUE_MIN = 0.4, 0.2  # backgrounds stay under 0.3 saturation; objects are above 0.65
MAX_COLOUR_DISTANCE = 90.0  # RGB distance past which a saturated pixel matches no palette colour
MIN_AREA = 0.002  # share of a frame's pixels an object must cover to count as seen (~0.4 of one at 256p)
PRESENT_SHARE = 0.75  # share of frames in which an object must be seen
STILL_MAX, MOVE_MIN = 0.05, 0.08  # displacement (in frame heights) of a still object / a moving one
BOUNCE_DROP, BOUNCE_RISE = 0.15, 0.06  # a bounce falls at least this far, then climbs back at least this

_NAMES = list(PALETTE)
_COLOURS = np.array([PALETTE[name] for name in _NAMES], dtype=np.float32)


def colour_labels(frames: np.ndarray) -> np.ndarray:
    """Palette index of each pixel of (T, H, W, 3) uint8 frames, -1 for background (T, H, W)."""
    rgb = frames.astype(np.float32)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    saturated = (high - low > SATURATION_MIN * np.maximum(high, 1.0)) & (high > VALUE_MIN * 255)
    distance = np.linalg.norm(rgb[..., None, :] - _COLOURS, axis=-1)
    labels = distance.argmin(axis=-1)
    return np.where(saturated & (distance.min(axis=-1) < MAX_COLOUR_DISTANCE), labels, -1)


def track(labels: np.ndarray, colour: str) -> np.ndarray:
    """Centre (x, y) per frame of the pixels of `colour`, as fractions of the frame; NaN where unseen."""
    mask = labels == _NAMES.index(colour)
    frames, height, width = mask.shape
    area = mask.reshape(frames, -1).mean(axis=1)
    ys, xs = (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (mask.sum(axis=1) * xs).sum(axis=1) / mask.sum(axis=(1, 2))
        y = (mask.sum(axis=2) * ys).sum(axis=1) / mask.sum(axis=(1, 2))
    centres = np.stack([x, y], axis=1)
    centres[area < MIN_AREA] = np.nan
    return centres


def classify_motion(centres: np.ndarray) -> str | None:
    """One of the toy world's motions for a (T, 2) path of centres; None when the object is mostly unseen."""
    seen = ~np.isnan(centres[:, 0])
    if seen.mean() < PRESENT_SHARE:
        return None
    path = centres[seen]
    ends = max(1, len(path) // 8)  # average a few frames at each end against jitter
    (x0, y0), (x1, y1) = path[:ends].mean(axis=0), path[-ends:].mean(axis=0)
    dx, dy = (x1 - x0) * ASPECT, y1 - y0  # in frame heights, so both axes compare
    lowest = int(path[:, 1].argmax())
    if 0.15 * len(path) < lowest < 0.85 * len(path):
        if path[lowest, 1] - y0 > BOUNCE_DROP and path[lowest, 1] - y1 > BOUNCE_RISE:
            return "bounce"
    if max(abs(dx), abs(dy)) < STILL_MAX:
        return "still"
    if max(abs(dx), abs(dy)) < MOVE_MIN:
        return None  # neither still nor clearly moving
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def score_truth(frames: np.ndarray, truth: ToyTruth) -> dict[str, float | str | None]:
    """Per-object colour and motion checks of (T, H, W, 3) frames against `truth`, and the verdict.

    An object's colour is right when it is seen in most frames and is among the k most covering
    colours of the video (k = objects named); its motion is the path of that colour's pixels.
    """
    labels = colour_labels(frames)
    coverage = np.bincount(labels[labels >= 0].ravel(), minlength=len(_NAMES))
    top = {_NAMES[i] for i in np.argsort(coverage)[::-1][: len(truth.objects)] if coverage[i] > 0}
    result: dict[str, float | str | None] = {}
    colours_ok, motions_ok = [], []
    for index, (colour, _shape, motion) in enumerate(truth.objects):
        centres = track(labels, colour)
        seen = float((~np.isnan(centres[:, 0])).mean())
        colour_ok = colour in top and seen >= PRESENT_SHARE
        detected = classify_motion(centres)
        colours_ok.append(colour_ok)
        motions_ok.append(colour_ok and detected == motion)
        result[f"object{index}_seen"] = seen
        result[f"object{index}_motion"] = detected
    result["colour_dominant"] = _NAMES[int(coverage.argmax())] if coverage.any() else None
    result["toy_colour"] = float(all(colours_ok))
    result["toy_direction"] = float(all(motions_ok))
    result["toy_adherence"] = float(all(colours_ok) and all(motions_ok))
    return result


def score_prompt(
    prompt: str, frames: np.ndarray, conditioning: np.ndarray | None = None
) -> dict[str, float] | None:
    """Toy-world quality figures of one output, for tracking next to `metrics.output_metrics`.

    None when `prompt` is not a toy-world prompt. `conditioning`: the (T, H, W, 3) input frames of an
    Image2World/Video2World request, whose reproduction is scored as PSNR/SSIM.
    """
    truth = parse_prompt(prompt)
    if truth is None:
        return None
    scores = {k: v for k, v in score_truth(frames, truth).items() if k.startswith("toy_")}
    if conditioning is not None:
        scores.update({f"toy_{k}": v for k, v in conditioning_fidelity(conditioning, frames).items()})
    return {key: float(value) for key, value in scores.items()}  # type: ignore[arg-type]
