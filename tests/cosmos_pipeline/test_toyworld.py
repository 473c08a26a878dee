"""The toy world and its scorer: scenes fixed by seed, prompts that parse back, scores that catch errors."""

import numpy as np
import pytest
import torch

from cosmos_pipeline import toyscore, toyworld
from cosmos_pipeline.toyworld import Scene, ToyObject


def frames_of(scene: Scene, height: int = 128, width: int = 224, num_frames: int = 29) -> np.ndarray:
    return toyworld.to_uint8(toyworld.render([scene], height, width, num_frames)[0])


def test_scenes_and_frames_are_fixed_by_the_seed():
    scenes = toyworld.prompt_set(4, seed=3)
    assert scenes == toyworld.prompt_set(4, seed=3) != toyworld.prompt_set(4, seed=4)
    assert torch.equal(toyworld.render(scenes, 64, 112, 9), toyworld.render(scenes, 64, 112, 9))


def test_every_prompt_parses_back_to_its_ground_truth():
    scenes = toyworld.prompt_set(200, seed=0, split="any", colours=tuple(toyworld.PALETTE))
    scenes += toyworld.prompt_set(50, seed=1, num_objects=2)
    for scene in scenes:
        truth = toyworld.parse_prompt(scene.prompt)
        assert truth is not None, scene.prompt
        assert truth.objects == tuple((o.colour, o.shape, o.motion) for o in scene.objects), scene.prompt
        assert truth.background == scene.background
    assert toyworld.parse_prompt("A robot arm stacks boxes in a warehouse.") is None


def test_held_out_prompts_combine_only_trained_words():
    def words(scenes: list[Scene], index: int) -> set[str]:
        return {(o.colour, o.shape, o.motion)[index] for s in scenes for o in s.objects}

    train = toyworld.prompt_set(300, seed=0)
    held_out = toyworld.prompt_set(60, seed=0, split="heldout")
    assert not any(toyworld.is_heldout(o.colour, o.shape, o.motion) for s in train for o in s.objects)
    assert all(toyworld.is_heldout(o.colour, o.shape, o.motion) for s in held_out for o in s.objects)
    for index in range(3):
        assert words(held_out, index) <= words(train, index)


@pytest.mark.parametrize("motion", list(toyworld.MOTIONS))
def test_rendered_truth_scores_as_adherent(motion):
    scene = toyworld.Scene(
        (ToyObject("green", "triangle", motion, 0.5, 0.3 if motion == "bounce" else 0.5),), "pale sky"
    )
    scores = toyscore.score_prompt(scene.prompt, frames_of(scene))
    assert scores == {"toy_colour": 1.0, "toy_direction": 1.0, "toy_adherence": 1.0}


def test_two_objects_are_tracked_apart():
    scene = toyworld.prompt_set(1, seed=5, num_objects=2)[0]
    assert toyscore.score_prompt(scene.prompt, frames_of(scene))["toy_adherence"] == 1.0


def test_a_wrong_colour_or_direction_is_caught():
    scene = Scene((ToyObject("red", "ball", "left", 0.7, 0.5),), "grey floor")
    frames = frames_of(scene)
    blue = toyscore.score_prompt("A blue ball rolls to the left across a grey floor.", frames)
    right = toyscore.score_prompt("A red ball rolls to the right across a grey floor.", frames)
    assert (blue["toy_colour"], blue["toy_adherence"]) == (0.0, 0.0)
    assert (right["toy_colour"], right["toy_direction"], right["toy_adherence"]) == (1.0, 0.0, 0.0)
    flat = np.full_like(frames, 128)  # what the untrained model makes: no object at all
    assert toyscore.score_prompt(scene.prompt, flat)["toy_colour"] == 0.0


def test_conditioning_is_scored_against_the_input_frames():
    scene = toyworld.prompt_set(1, seed=2)[0]
    frames = frames_of(scene, num_frames=9)
    noisy = np.clip(frames.astype(int) + 8, 0, 255).astype(np.uint8)
    scores = toyscore.score_prompt(scene.prompt, noisy, conditioning=frames[:1])
    assert 25 < scores["toy_conditioning_psnr"] < 35 and scores["toy_conditioning_ssim"] > 0.9
    assert toyscore.score_prompt("a robot arm", frames) is None
