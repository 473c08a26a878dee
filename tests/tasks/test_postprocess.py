"""Post-processing pieces: key frames, the frame gate, the toy-world quality figures."""

from types import SimpleNamespace

import numpy as np

from cosmos_pipeline import toyworld
from tasks.postprocess import frame_table, gate, keyframe_indices, quality


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


def test_quality_scores_toy_world_prompts_on_the_embedded_model_only() -> None:
    scene = toyworld.prompt_set(1, seed=0)[0]
    truth = toyworld.to_uint8(toyworld.render([scene], 128, 224, 29)[0])
    embedded = SimpleNamespace(model_id="embedded:tiny", prompt=scene.prompt)
    assert quality(embedded, truth) == {
        "quality/adherence": 1.0, "quality/colour_right": 1.0, "quality/direction_right": 1.0
    }  # fmt: skip
    assert quality(embedded, np.full_like(truth, 128))["quality/adherence"] == 0.0
    assert quality(SimpleNamespace(model_id="nvidia/Cosmos-Predict2.5-2B", prompt=scene.prompt), truth) == {}
    assert (
        quality(SimpleNamespace(model_id="embedded:tiny", prompt="A warehouse aisle at dawn."), truth) == {}
    )
