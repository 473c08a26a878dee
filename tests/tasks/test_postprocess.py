"""Post-processing pieces: key frames and the frame gate."""

import numpy as np

from tasks.postprocess import frame_table, gate, keyframe_indices


def test_keyframes_are_first_middle_last() -> None:
    assert keyframe_indices(29) == [0, 14, 28]
    assert keyframe_indices(2) == [0, 1]
    assert keyframe_indices(1) == [0]


def test_gate_passes_a_textured_video_and_flags_black_frames_and_counts() -> None:
    rng = np.random.default_rng(0)
    textured = rng.integers(60, 200, (5, 32, 48, 3), dtype=np.uint8)
    result, problems = gate(frame_table(textured), 5)
    assert result["success"] and problems == []

    dark = textured.copy()
    dark[2] = 0
    result, problems = gate(frame_table(dark), 9)
    assert not result["success"]
    assert any("black" in problem and "[2]" in problem for problem in problems)
    assert any("should have 9 frames" in problem for problem in problems)
