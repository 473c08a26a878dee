"""Generation on the embedded model, every mode, against the plain diffusers call."""

import numpy as np
import PIL.Image
import pytest
import torch

from cosmos_pipeline.generate import generate, load_conditioning
from cosmos_pipeline.loading import PipelineCache, PipelineKey

from .conftest import ASSETS, tiny_request

CASES = {
    "text2world": {},
    "text2image": {"num_frames": 1},
    "image2world": {"input_path": ASSETS / "media" / "warehouse_robot.png"},
    "image2image": {"input_path": ASSETS / "media" / "warehouse_robot.png", "num_frames": 1},
    "video2world": {"input_path": ASSETS / "media" / "rolling_ball.mp4"},
}


@pytest.fixture(scope="module")
def cache() -> PipelineCache:
    return PipelineCache()


@pytest.mark.parametrize("mode", CASES)
def test_every_mode_matches_the_diffusers_call(cache, mode):
    request = tiny_request(**CASES[mode])
    assert request.mode == mode
    pipe = cache.get(PipelineKey.for_request(request))
    result = generate(pipe, request)

    assert result.frames.shape == (request.num_frames, request.height, request.width, 3)
    assert result.frames.dtype == np.uint8 and result.frames.std() > 0
    assert torch.isfinite(result.latents).all()

    conditioning = load_conditioning(request)
    media = {}
    if request.source == "image":
        media["image"] = PIL.Image.fromarray(conditioning[0])
    elif request.source == "video":
        media["video"] = [PIL.Image.fromarray(frame) for frame in conditioning]
    reference = pipe(
        prompt=request.prompt,
        height=request.height,
        width=request.width,
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        generator=torch.Generator().manual_seed(request.seed),
        output_type="np",
        **media,
    ).frames[0]
    np.testing.assert_array_equal(result.frames, (reference * 255).astype(np.uint8))


def test_result_reports_seed_timings_and_guardrail(cache):
    steps = []
    request = tiny_request(seed=None)
    result = generate(
        cache.get(PipelineKey.for_request(request)), request, on_step=lambda *a: steps.append(a)
    )
    assert isinstance(result.seed, int) and result.request.seed == result.seed
    assert len(result.timings.steps_s) == request.num_inference_steps == len(steps)
    assert [s[:2] for s in steps] == [(0, 2), (1, 2)]
    assert result.timings.total_s >= result.timings.denoising_s + result.timings.decode_s > 0
    assert result.timings.prompt_encoding_s >= 0 and result.peak_memory_bytes is None  # CPU
    assert result.guardrail is False  # auto: off for the embedded model


def test_same_seed_same_pixels_other_seed_other_pixels(cache):
    request = tiny_request(seed=42)
    pipe = cache.get(PipelineKey.for_request(request))
    first, second = generate(pipe, request), generate(pipe, request)
    np.testing.assert_array_equal(first.frames, second.frames)
    assert not np.array_equal(first.frames, generate(pipe, tiny_request(seed=43)).frames)


def test_negative_prompt_changes_the_output(cache):
    pipe = cache.get(PipelineKey.for_request(tiny_request()))
    default = generate(pipe, tiny_request())
    custom = generate(pipe, tiny_request(negative_prompt="blurry, dark"))
    assert not np.array_equal(default.frames, custom.frames)


def test_variants_give_different_outputs(cache):
    pre = tiny_request(revision="diffusers/base/pre-trained")
    post = tiny_request(revision="diffusers/base/post-trained")
    a = generate(cache.get(PipelineKey.for_request(pre)), pre)
    b = generate(cache.get(PipelineKey.for_request(post)), post)
    assert not np.array_equal(a.frames, b.frames)
