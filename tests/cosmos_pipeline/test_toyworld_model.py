"""The trained embedded model does its job through the real pipeline: what would catch a broken one.

A wrong sign in classifier-free guidance, an ignored conditioning frame, a LoRA that does nothing or
a long video that loses its object all pass the equality tests; they fail here. Small sizes and few
steps, where the properties still hold. Skipped until `scripts/train_toyworld.py`'s weights are
installed in `cosmos_pipeline/embedded/`.
"""

import numpy as np
import PIL.Image
import pytest

from cosmos_pipeline import tiny, toyscore, toyworld
from cosmos_pipeline.generate import generate
from cosmos_pipeline.loading import PipelineCache, PipelineKey
from cosmos_pipeline.long_video import generate_long, seam_consistency

from .conftest import tiny_request

pytestmark = pytest.mark.skipif(
    not (tiny.EMBEDDED_DIR / tiny.REVISION_FOLDERS[tiny.POST_TRAINED] / "model_index.json").is_file(),
    reason="the trained embedded model is not installed (scripts/train_toyworld.py --export)",
)
SMALL = {"height": 128, "width": 224, "num_frames": 13, "num_inference_steps": 12}


@pytest.fixture(scope="module")
def cache() -> PipelineCache:
    return PipelineCache(capacity=3)


def run(cache: PipelineCache, scene: toyworld.Scene, seed: int, **overrides) -> np.ndarray:
    request = tiny_request(prompt=scene.prompt, seed=seed, **{**SMALL, **overrides})
    return generate(cache.get(PipelineKey.for_request(request)), request).frames


def adherence(cache: PipelineCache, scenes: list, **overrides) -> float:
    scores = [toyscore.score_prompt(s.prompt, run(cache, s, i, **overrides)) for i, s in enumerate(scenes)]
    return float(np.mean([score["toy_adherence"] for score in scores]))


def test_guidance_makes_videos_follow_their_prompt(cache):
    scenes = toyworld.prompt_set(6, seed=41, split="heldout")
    guided = adherence(cache, scenes)
    assert guided >= 0.5 and guided > adherence(cache, scenes, guidance_scale=1.0)


def test_image2world_keeps_the_input_frame(cache, tmp_path):
    scene = toyworld.prompt_set(1, seed=42, split="heldout")[0]
    image = toyworld.to_uint8(toyworld.render([scene], 128, 224, 1)[0])[0]
    PIL.Image.fromarray(image).save(tmp_path / "first.png")
    frames = run(cache, scene, 0, input_path=tmp_path / "first.png")
    scores = toyscore.score_prompt(scene.prompt, frames, conditioning=image[None])
    assert scores["toy_conditioning_psnr"] >= 25 and scores["toy_colour"] == 1.0


def test_lora_teaches_pink_and_scale_zero_gives_the_base_back(cache):
    pink = toyworld.prompt_set(3, seed=43, split="any", colours=(toyworld.NEW_COLOUR,))
    with_lora = {"lora_path": tiny.LORA_PATH}
    assert adherence(cache, pink, **with_lora) > adherence(cache, pink)
    blue = toyworld.prompt_set(1, seed=44, colours=("blue",))[0]
    assert toyscore.score_prompt(blue.prompt, run(cache, blue, 0, **with_lora))["toy_colour"] == 1.0
    np.testing.assert_array_equal(run(cache, blue, 0, lora_scale=0.0, **with_lora), run(cache, blue, 0))


def test_post_training_changes_the_model_where_it_was_aimed(cache):
    two = toyworld.prompt_set(4, seed=45, num_objects=2)
    pre = {"revision": tiny.PRE_TRAINED}
    assert not np.array_equal(run(cache, two[0], 0), run(cache, two[0], 0, **pre))
    assert adherence(cache, two) > adherence(cache, two, **pre)


def test_a_long_video_keeps_its_object_on_track_across_seams(cache):
    scene = toyworld.Scene((toyworld.ToyObject("yellow", "ball", "right", 0.2, 0.5),), "grey floor")
    request = tiny_request(prompt=scene.prompt, seed=0, **{**SMALL, "num_frames": 45}, chunk_size=29)
    result = generate_long(cache.get(PipelineKey.for_request(request)), request)
    centres = toyscore.track(toyscore.colour_labels(result.frames), "yellow")
    assert toyscore.classify_motion(centres) == "right"
    steps = np.abs(np.diff(centres[:, 0]))
    for seam in result.seams:  # the step into a window's first new frame is like the steps inside windows
        assert steps[seam - 1] < 3 * np.nanmedian(steps) + 0.02
    assert seam_consistency(result.frames, result.seams)["seam_ratio"] < 3
