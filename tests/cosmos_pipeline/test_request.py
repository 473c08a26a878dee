from pathlib import Path

import pytest
from pydantic import ValidationError

from cosmos_pipeline.request import GenerationRequest, nearest_valid_frame_counts


def make(**fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a ball rolls", **fields})


@pytest.mark.parametrize(
    ("input_path", "num_frames", "mode"),
    [
        (None, 93, "text2world"),
        ("a.png", 93, "image2world"),
        ("a.mp4", 93, "video2world"),
        (None, 1, "text2image"),
        ("a.jpg", 1, "image2image"),
    ],
)
def test_mode_is_derived_from_inputs(input_path, num_frames, mode):
    request = make(input_path=input_path and Path(input_path), num_frames=num_frames)
    assert request.mode == mode


def test_defaults_match_the_model_card():
    request = make()
    assert (request.height, request.width, request.num_frames) == (704, 1280, 93)
    assert (request.num_inference_steps, request.guidance_scale) == (36, 7.0)
    assert request.model_id == "nvidia/Cosmos-Predict2.5-2B"
    assert request.revision == "diffusers/base/post-trained"
    assert request.dtype == "auto" and request.guardrail == "auto" and request.fit == "crop"


def test_prompts_are_stripped_and_required():
    assert make(prompt="  hello \n", negative_prompt=" blur ").prompt == "hello"
    assert make(negative_prompt=" blur ").negative_prompt == "blur"
    with pytest.raises(ValidationError, match="prompt is empty"):
        make(prompt=" \n\t")


@pytest.mark.parametrize("frames", [2, 30, 92, 94])
def test_frame_count_names_nearest_valid_values(frames):
    below, above = nearest_valid_frame_counts(frames)
    assert (below - 1) % 4 == 0 and (above - 1) % 4 == 0 and below < frames < above
    with pytest.raises(ValidationError, match=f"nearest valid counts are {below} and {above}"):
        make(num_frames=frames)


@pytest.mark.parametrize("field", ["height", "width"])
def test_sizes_must_be_multiples_of_16(field):
    with pytest.raises(ValidationError, match="700 is not a multiple of 16; use 688 or 704"):
        make(**{field: 700})


def test_output_kind_must_match_frame_count():
    with pytest.raises(ValidationError, match=r"should end in \.mp4"):
        make(num_frames=93, output_path=Path("x.png"))
    with pytest.raises(ValidationError, match=r"should end in \.png"):
        make(num_frames=1, output_path=Path("x.mp4"))


def test_video_input_needs_frames_beyond_the_condition():
    with pytest.raises(ValidationError, match="keeps the last 5 input frames"):
        make(input_path=Path("clip.mp4"), num_frames=5)
    assert (
        make(input_path=Path("clip.mp4"), num_frames=5, num_latent_conditional_frames=1).conditioning_frames
        == 1
    )


def test_unsupported_media_suffix():
    with pytest.raises(ValidationError, match="unsupported media suffix '.txt'"):
        make(input_path=Path("notes.txt"))


def test_unknown_fields_and_wrong_types_are_refused():
    with pytest.raises(ValidationError):
        make(num_steps=3)  # seed names are mapped in cosmos_pipeline.bundle, not accepted here
    with pytest.raises(ValidationError):
        make(num_frames="many")


def test_a_seed_is_always_chosen():
    request = make().with_seed()
    assert isinstance(request.seed, int) and 0 <= request.seed < 2**31
    assert make(seed=7).with_seed().seed == 7


def test_the_distilled_model_is_text2world_unless_allowed() -> None:
    with pytest.raises(ValueError, match="documented for Text2World only.*--distilled_conditioning"):
        GenerationRequest(prompt="p", revision="distilled", input_path=Path("robot.png"))
    allowed = GenerationRequest(
        prompt="p", revision="distilled", input_path=Path("robot.png"), distilled_conditioning=True
    )
    assert allowed.is_distilled and allowed.mode == "image2world"
