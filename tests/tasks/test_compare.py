"""Comparison media: side-by-side videos a person can watch, key-frame grids for MLflow's image grid."""

from pathlib import Path

import numpy as np

from cosmos_pipeline.media import read_image, read_video, write_image, write_video
from cosmos_pipeline.runner import OUTPUT_FPS
from tasks.compare import (
    GAP,
    MIN_SECONDS,
    MIN_WIDTH,
    ROW_LABEL_WIDTH,
    Case,
    keyframe_grid,
    playback,
    side_by_side,
    write_comparison,
)


def cases(*variants: str) -> list[Case]:
    return [
        Case("robot", variant, 7, Path(f"{variant}.mp4"), f"run-{variant}", ("flicker 0.1",))
        for variant in variants
    ]


def test_side_by_side_is_upscaled_labelled_and_cut_to_the_shortest_clip() -> None:
    black = np.zeros((9, 32, 48, 3), np.uint8)
    white = np.full((11, 32, 48, 3), 255, np.uint8)
    video = side_by_side(cases("pre-trained", "post-trained"), [black, white])
    factor = 8  # 2 x 48 px -> the first whole factor past MIN_WIDTH
    assert video.shape[2] == 2 * 48 * factor + GAP >= MIN_WIDTH
    slowdown, loops = playback(9)
    assert video.shape[0] == 9 * slowdown * loops and video.shape[0] / OUTPUT_FPS >= MIN_SECONDS
    frame = video[0]
    assert (frame[-32 * factor :, : 48 * factor] == 0).all() and (
        frame[-32 * factor :, -48 * factor :] == 255
    ).all()
    bands = frame[: -32 * factor]
    assert bands.max() > 200 and bands.shape[0] % 2 == 0  # white text on dark bands, H.264-friendly
    assert not np.array_equal(video[0, :30], video[slowdown * 8, :30])  # the title counts frames: 1/9 ... 9/9


def test_playback_slows_short_clips_then_loops_them() -> None:
    assert playback(93) == (1, 1)  # 5.8 s at 16 fps: as it is
    assert playback(33) == (2, 1)
    assert playback(9) == (4, 2)  # 9 frames: 4x slower, twice: 4.5 s
    assert playback(1) == (4, 16)


def test_keyframe_grid_has_a_row_per_key_frame_and_a_column_per_variant() -> None:
    clips = [np.full((9, 64, 112, 3), value, np.uint8) for value in (0, 128, 255)]
    grid = keyframe_grid(cases("a", "b", "c"), clips)
    tile_height, tile_width = 128, 224  # 112 px upscaled twice towards GRID_TILE_WIDTH
    assert grid.shape[1] == ROW_LABEL_WIDTH + 3 * tile_width + 2 * GAP
    last_row = grid[-tile_height:]
    for column, value in enumerate((0, 128, 255)):
        start = ROW_LABEL_WIDTH + column * (tile_width + GAP)
        assert (last_row[:, start : start + tile_width] == value).all()
    header = grid.shape[0] - 3 * tile_height - 3 * GAP
    assert 0 < header < 64


def test_comparison_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    videos = [
        write_video(rng.integers(0, 255, (5, 32, 48, 3), dtype=np.uint8), tmp_path / f"{v}.mp4") for v in "ab"
    ]
    group = [Case("asset", label, 7, path, f"run-{label}") for label, path in zip("ab", videos, strict=True)]
    comparison = write_comparison(group, tmp_path / "cmp")
    assert (
        comparison.media.name == "asset-seed7.mp4"
        and comparison.keyframes.name == "asset-seed7-keyframes.png"
    )
    video = read_video(comparison.media)
    assert video.shape[2] >= MIN_WIDTH and video.shape[0] / OUTPUT_FPS >= MIN_SECONDS
    assert read_image(comparison.keyframes).shape[1] == ROW_LABEL_WIDTH + 2 * 240 + GAP
    images = [
        write_image(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8), tmp_path / f"{v}.png") for v in "ab"
    ]
    group = [Case("still", label, 1, path, "r") for label, path in zip("ab", images, strict=True)]
    assert write_comparison(group, tmp_path / "cmp").media.suffix == ".png"
