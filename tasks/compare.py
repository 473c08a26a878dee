"""Comparison media MLflow's UI does not offer: the variants' outputs side by side, labelled.

One MP4 (or PNG for images) per (asset, seed): each variant's output read back from disk, a label
band drawn above it, tiles stacked left to right in the suite's variant order.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from cosmos_pipeline.media import read_image, read_video, write_image, write_video
from cosmos_pipeline.runner import OUTPUT_FPS

LABEL_HEIGHT = 24  # even, so H.264's 2x2 chroma subsampling still fits


@dataclass
class Case:
    """One finished generation of an evaluation."""

    asset: str
    variant: str
    seed: int
    output_path: Path
    run_id: str


def label_band(text: str, width: int) -> np.ndarray:
    """A (LABEL_HEIGHT, width, 3) dark band with `text` in white."""
    band = Image.new("RGB", (width, LABEL_HEIGHT), (24, 24, 24))
    draw = ImageDraw.Draw(band)
    font = ImageFont.load_default(size=LABEL_HEIGHT - 8)
    draw.text((6, 3), text, fill=(255, 255, 255), font=font)
    return np.asarray(band)


def side_by_side(frames_by_label: dict[str, np.ndarray]) -> np.ndarray:
    """(T, H + LABEL_HEIGHT, W * n, 3): each (T, H, W, 3) clip under its label, left to right.

    Clips of different lengths are cut to the shortest, so every column shows the same instant.
    """
    length = min(frames.shape[0] for frames in frames_by_label.values())
    tiles = []
    for label, frames in frames_by_label.items():
        band = np.broadcast_to(label_band(label, frames.shape[2]), (length, LABEL_HEIGHT, frames.shape[2], 3))
        tiles.append(np.concatenate([band, frames[:length]], axis=1))
    return np.ascontiguousarray(np.concatenate(tiles, axis=2))


def read_output(path: Path) -> np.ndarray:
    return read_image(path)[None] if path.suffix.lower() == ".png" else read_video(path)


def write_comparison(cases: list[Case], directory: Path) -> Path:
    """The side-by-side file of cases that share an asset and a seed."""
    first = cases[0]
    combined = side_by_side({case.variant: read_output(case.output_path) for case in cases})
    stem = f"{first.asset}-seed{first.seed}"
    if combined.shape[0] == 1:
        return write_image(combined[0], directory / f"{stem}.png", overwrite=True)
    return write_video(combined, directory / f"{stem}.mp4", fps=OUTPUT_FPS, overwrite=True)


@task(name="compare-variants", cache_policy=NONE, persist_result=False)
def compare_variants(cases: list[Case], directory: Path) -> list[Path]:
    """One side-by-side file per (asset, seed) that more than one variant finished."""
    groups: dict[tuple[str, int], list[Case]] = {}
    for case in cases:
        groups.setdefault((case.asset, case.seed), []).append(case)
    written = [write_comparison(group, directory) for group in groups.values() if len(group) > 1]
    get_run_logger().info("wrote %d side-by-side comparison(s) to %s", len(written), directory)
    return written
