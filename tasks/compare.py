"""Comparison media MLflow's UI does not offer: the variants' outputs side by side, labelled.

Per (asset, seed) that more than one variant finished, variants left to right in the suite's order:
- `<asset>-seed<N>.mp4` (a PNG for images): the outputs side by side under a title band (asset, seed,
  playback) and a band per variant (its name and headline figures). Small outputs are upscaled by a whole
  factor to at least MIN_WIDTH (pixels stay the model's, only bigger), and short clips are slowed and
  looped to at least MIN_SECONDS: a 9-frame test clip plays 0.56 s at 16 fps, too short to see anything.
- `<asset>-seed<N>-keyframes.png`: the first, middle and last frame of every variant, one row per frame,
  for MLflow's image grid (the evaluate flow logs it on the parent run with `log_image`).
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from cosmos_pipeline.media import read_image, read_video, write_image, write_video
from cosmos_pipeline.runner import OUTPUT_FPS
from tasks.postprocess import keyframe_indices

MIN_WIDTH = 720  # px: MLflow's player shows a video at its own size, under controls about 60 px tall
MIN_SECONDS = 4.0  # a comparison plays at least this long (short clips slowed, then looped)
MAX_SLOWDOWN = 4  # slower than a quarter of the speed, motion reads as a slideshow: loop instead
VIDEO_TEXT = (18, 15)  # font px of a video band's first line and of the lines under it
# MLflow's image grid shows a 256 px thumbnail of the grid: tiles ~240 px wide and large labels stay legible.
GRID_TILE_WIDTH, GRID_TEXT, ROW_LABEL_WIDTH = 240, (30, 22), 116
GAP = 4  # px of background between tiles (even, like every size here, for H.264)
BACKGROUND, FOREGROUND, MUTED = (24, 24, 24), (255, 255, 255), (190, 190, 190)


@dataclass(frozen=True)
class Case:
    """One finished generation of an evaluation, with the figures its label shows."""

    asset: str
    variant: str
    seed: int
    output_path: Path
    run_id: str
    caption: tuple[str, ...] = ()  # headline figures, one line each, under the variant's name


@dataclass(frozen=True)
class Comparison:
    """The comparison files of one (asset, seed)."""

    asset: str
    seed: int
    media: Path  # the side-by-side MP4 (PNG for images)
    keyframes: Path  # the key-frame grid PNG
    cases: tuple[Case, ...]  # in the suite's variant order


def text_band(
    lines: list[str], width: int, sizes: tuple[int, int] = VIDEO_TEXT, right: str = ""
) -> np.ndarray:
    """A dark (h, width, 3) band: the first line large and white, the others smaller and grey; `right` is
    right-aligned on the first line. h is even, so H.264's 2x2 chroma subsampling still fits."""
    heights = [sizes[0]] + [sizes[1]] * (len(lines) - 1)
    height = 8 + sum(size + 4 for size in heights)
    band = Image.new("RGB", (width, height + height % 2), BACKGROUND)
    draw = ImageDraw.Draw(band)
    y = 5
    for index, (line, size) in enumerate(zip(lines, heights, strict=True)):
        colour = FOREGROUND if index == 0 else MUTED
        draw.text((8, y), line, fill=colour, font=ImageFont.load_default(size=size))
        y += size + 4
    if right:
        font = ImageFont.load_default(size=sizes[1])
        draw.text((width - 8 - draw.textlength(right, font=font), 7), right, fill=MUTED, font=font)
    return np.asarray(band)


def fill(shape: tuple[int, ...]) -> np.ndarray:
    """A block of background colour."""
    block = np.empty(shape, np.uint8)
    block[:] = BACKGROUND
    return block


def pad(band: np.ndarray, height: int) -> np.ndarray:
    """`band` extended with background to `height` rows."""
    return np.concatenate([band, fill((height - band.shape[0], *band.shape[1:]))], axis=0)


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """(..., H, W, 3) -> (..., H*factor, W*factor, 3) by repeating pixels (nothing the model did not draw)."""
    return frames if factor == 1 else frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def scale_for(width: int, columns: int) -> int:
    """The whole factor that makes `columns` tiles of `width` px at least MIN_WIDTH wide together."""
    return max(1, math.ceil(MIN_WIDTH / (width * columns)))


def fit_width(frames: np.ndarray, width: int) -> np.ndarray:
    """(T, H, W, 3) frames about `width` px wide: small ones upscaled by a whole factor, large ones shrunk."""
    if frames.shape[2] <= width:
        return upscale(frames, max(1, width // frames.shape[2]))
    height = round(frames.shape[1] * width / frames.shape[2] / 2) * 2
    resize = [Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS) for frame in frames]
    return np.stack([np.asarray(frame) for frame in resize])


def playback(num_frames: int, fps: int = OUTPUT_FPS) -> tuple[int, int]:
    """(slowdown, loops) that make `num_frames` at `fps` last at least MIN_SECONDS."""
    wanted = math.ceil(MIN_SECONDS * fps)
    slowdown = min(MAX_SLOWDOWN, max(1, math.ceil(wanted / num_frames)))
    return slowdown, max(1, math.ceil(wanted / (num_frames * slowdown)))


def read_output(path: Path) -> np.ndarray:
    return read_image(path)[None] if path.suffix.lower() == ".png" else read_video(path)


def labelled_columns(labels: list[list[str]], tiles: list[np.ndarray], sizes: tuple[int, int]) -> np.ndarray:
    """(T, band + H, sum W + gaps, 3): each (T, H, W, 3) tile under a band of its labels, left to right."""
    bands = [text_band(lines, tile.shape[2], sizes) for lines, tile in zip(labels, tiles, strict=True)]
    height = max(band.shape[0] for band in bands)
    columns = []
    for band, tile in zip(bands, tiles, strict=True):
        if columns:
            columns.append(fill((tile.shape[0], height + tile.shape[1], GAP, 3)))
        band = np.broadcast_to(pad(band, height), (tile.shape[0], height, *band.shape[1:]))
        columns.append(np.concatenate([band, tile], axis=1))
    return np.concatenate(columns, axis=2)


def side_by_side(cases: list[Case], clips: list[np.ndarray]) -> np.ndarray:
    """(T', H', W', 3): the clips left to right under their variant's band and a title band, upscaled to
    MIN_WIDTH, slowed and looped to MIN_SECONDS.

    Clips of different lengths are cut to the shortest, so every column shows the same instant.
    """
    length = min(clip.shape[0] for clip in clips)
    factor = scale_for(clips[0].shape[2], len(clips))
    labels = [[case.variant, *case.caption] for case in cases]
    video = labelled_columns(labels, [upscale(clip[:length], factor) for clip in clips], VIDEO_TEXT)
    slowdown, loops = playback(length) if length > 1 else (1, 1)
    title = f"{cases[0].asset} · seed {cases[0].seed}"
    speed = f"slowed {slowdown}x · " if slowdown > 1 else ""
    frames = [
        np.concatenate([text_band([title], video.shape[2], right=f"{speed}frame {i + 1}/{length}"), video[i]])
        for i in range(length)
    ]
    return np.stack([frame for _ in range(loops) for frame in frames for _ in range(slowdown)])


def keyframe_grid(cases: list[Case], clips: list[np.ndarray]) -> np.ndarray:
    """(H, W, 3): the first, middle and last frame (rows) of every variant (columns, named on top)."""
    length = min(clip.shape[0] for clip in clips)
    indices = keyframe_indices(length)
    tiles = [fit_width(clip[indices], GRID_TILE_WIDTH) for clip in clips]
    grid = labelled_columns([[case.variant] for case in cases], tiles, GRID_TEXT)  # (rows, band + H, W, 3)
    band = grid.shape[1] - tiles[0].shape[1]
    names = {0: "first", length - 1: "last"}
    rows = [np.concatenate([fill((band, ROW_LABEL_WIDTH, 3)), grid[0, :band]], axis=1)]
    for row, index in enumerate(indices):
        label = text_band([names.get(index, "middle"), f"frame {index}"], ROW_LABEL_WIDTH, GRID_TEXT)
        rows.append(fill((GAP, ROW_LABEL_WIDTH + grid.shape[2], 3)))
        height = max(label.shape[0], grid.shape[1] - band)
        rows.append(np.concatenate([pad(label, height), pad(grid[row, band:], height)], axis=1))
    return np.concatenate(rows, axis=0)


def write_comparison(cases: list[Case], directory: Path) -> Comparison:
    """The side-by-side file and the key-frame grid of cases that share an asset and a seed."""
    clips = [read_output(case.output_path) for case in cases]
    stem = f"{cases[0].asset}-seed{cases[0].seed}"
    keyframes = write_image(keyframe_grid(cases, clips), directory / f"{stem}-keyframes.png", overwrite=True)
    combined = side_by_side(cases, clips)
    if combined.shape[0] == 1:
        media = write_image(combined[0], directory / f"{stem}.png", overwrite=True)
    else:
        media = write_video(combined, directory / f"{stem}.mp4", fps=OUTPUT_FPS, overwrite=True)
    return Comparison(cases[0].asset, cases[0].seed, media, keyframes, tuple(cases))


@task(name="compare-variants", cache_policy=NONE, persist_result=False)
def compare_variants(cases: list[Case], directory: Path) -> list[Comparison]:
    """The comparison files of every (asset, seed) that more than one variant finished."""
    groups: dict[tuple[str, int], list[Case]] = {}
    for case in cases:
        groups.setdefault((case.asset, case.seed), []).append(case)
    written = [write_comparison(group, directory) for group in groups.values() if len(group) > 1]
    get_run_logger().info("wrote %d side-by-side comparison(s) to %s", len(written), directory)
    return written
