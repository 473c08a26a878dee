"""Hostile input: path escapes, oversized media, and arbitrary bundle JSON."""

import json
import os
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cosmos_pipeline.errors import InputError
from cosmos_pipeline.policy import Policy

from .conftest import ASSETS, checked
from .media_files import png_bytes


@pytest.fixture
def roots(tmp_path):
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir(), outputs.mkdir()
    Image.new("RGB", (64, 48), "red").save(inputs / "ok.png")
    return inputs, outputs, Policy(input_roots=(inputs,), output_root=outputs)


def resolve(policy, **cli):
    return checked(cli, policy)


def test_media_and_output_inside_the_roots_are_accepted(roots):
    inputs, outputs, policy = roots
    [request] = resolve(
        policy, input_path=str(inputs / "ok.png"), prompt="p", output_path=str(outputs / "a.mp4")
    )
    assert request.mode == "image2world"


@pytest.mark.parametrize(
    "escape",
    [
        lambda inputs: inputs / ".." / "secret.png",  # dot-dot
        lambda inputs: inputs.parent / "secret.png",  # plain absolute path outside
        lambda inputs: inputs / "link.png",  # a symlink pointing outside
    ],
)
def test_media_outside_the_input_roots_is_refused(roots, escape):
    inputs, outputs, policy = roots
    secret = inputs.parent / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    os.symlink(secret, inputs / "link.png")
    with pytest.raises(InputError, match="outside the allowed input folders"):
        resolve(policy, input_path=str(escape(inputs)), prompt="p", output_path=str(outputs / "a.mp4"))


def test_bundle_paths_cannot_escape_either(roots):
    inputs, outputs, policy = roots
    (inputs / "b.json").write_text(json.dumps({"prompt": "p", "input_path": "../../../../etc/hostname.png"}))
    with pytest.raises(InputError, match="outside the allowed input folders"):
        resolve(policy, input_path=str(inputs / "b.json"), output_path=str(outputs))


def test_output_outside_the_output_root_is_refused(roots):
    inputs, outputs, policy = roots
    for target in (outputs / ".." / "x.mp4", outputs.parent / "x.mp4"):
        with pytest.raises(InputError, match="outside the output folder"):
            resolve(policy, prompt="p", output_path=str(target))


def test_size_limits(roots, tmp_path):
    inputs, outputs, _ = roots
    out = str(outputs / "a.mp4")
    with pytest.raises(InputError, match="characters; the limit is 100"):
        resolve(Policy(max_prompt_chars=100), prompt="x" * 101, output_path=out)
    with pytest.raises(InputError, match="frames requested; the limit is 93"):
        resolve(Policy(max_num_frames=93), prompt="p", num_output_frames=97, output_path=out)
    with pytest.raises(
        InputError, match=r"2048x2048 output \(height x width\) is 4194304 pixels; the limit is"
    ):
        resolve(Policy(), prompt="p", height=2048, width=2048, output_path=out)
    with pytest.raises(InputError, match="bytes; the limit is 10 bytes"):
        resolve(Policy(max_media_bytes=10), prompt="p", input_path=str(inputs / "ok.png"), output_path=out)
    with pytest.raises(
        InputError, match=r"64x48 \(width x height\), 3072 pixels; the limit is 100 pixels a frame"
    ):
        resolve(Policy(max_media_pixels=100), prompt="p", input_path=str(inputs / "ok.png"), output_path=out)
    with pytest.raises(InputError, match="320x192 .* the limit is 100 pixels"):
        video = str(ASSETS / "media" / "rolling_ball.mp4")
        resolve(Policy(max_media_pixels=100), prompt="p", input_path=video, output_path=out)


def test_camera_photos_pass_the_default_pixel_limit(roots):
    """A 5472x3648 JPEG (the upstream project's example photo size, 20 MP) and a 50 MP one."""
    inputs, outputs, _ = roots
    for width, height in ((5472, 3648), (8660, 5774)):
        Image.new("RGB", (width, height), "gray").save(inputs / "photo.jpg")
        [request] = resolve(
            Policy(), prompt="p", input_path=str(inputs / "photo.jpg"), output_path=str(outputs)
        )
        assert request.mode == "image2world"


@pytest.mark.parametrize(("width", "height"), [(10_000, 10_000), (20_000, 20_000)])
def test_decompression_bomb_header_is_refused_before_decoding(roots, width, height):
    """The header claims the size; the data is a few bytes, so reaching the decoder would fail differently.
    Above ~179 MP Pillow refuses it itself; the message names the setting either way."""
    inputs, outputs, _ = roots
    bomb = inputs / "bomb.png"
    bomb.write_bytes(png_bytes(np.zeros((1, 1, 1)), colour_type=0, bit_depth=8, size=(width, height)))
    setting = (
        r"the limit is 67108864 pixels a frame \(policy `max_media_pixels`; .*COSMOS_POLICY__MAX_MEDIA_PIXELS"
    )
    with pytest.raises(InputError, match=f"bomb.png (is {width}x{height}|has over).*{setting}"):
        resolve(Policy(), prompt="p", input_path=str(bomb), output_path=str(outputs / "a.mp4"))


JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=10), inner, max_size=3), max_leaves=8)  # fmt: skip
KEYS = st.sampled_from([
    "prompt", "prompt_path", "negative_prompt", "negative_prompt_path", "input_path", "output_path", "name",
    "num_output_frames", "num_steps", "guidance", "seed", "resolution", "height", "width", "fit", "model_id",
    "revision", "dtype", "guardrail", "chunk_size", "chunk_overlap", "lora_scale", "overwrite",
    "inference_type",
])  # fmt: skip
PATHISH = st.sampled_from(
    ["../../etc/passwd", "/etc/passwd", "media/warehouse_robot.png", "x.mp4", "", "a/../b.png"]
)
BUNDLES = st.dictionaries(KEYS, JSON_VALUES | PATHISH, max_size=8) | JSON_VALUES
RAW = st.text(alphabet=string.printable, max_size=200)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=BUNDLES | RAW, as_text=st.booleans())
def test_any_bundle_gives_requests_or_a_clear_error(tmp_path_factory, content, as_text):
    folder = tmp_path_factory.mktemp("hostile")
    bundle = folder / "bundle.json"
    bundle.write_text(content if isinstance(content, str) and as_text else json.dumps(content))
    policy = Policy(input_roots=(folder,), output_root=folder / "out")
    try:
        requests = checked({"input_path": str(bundle), "output_path": str(folder / "out")}, policy)
    except InputError as error:
        assert str(error).strip() and "Traceback" not in str(error)
        return
    for request in requests:  # anything accepted is a valid, confined request
        assert request.prompt.strip() and request.output_path.resolve().is_relative_to(
            (folder / "out").resolve()
        )
        assert request.input_path is None or request.input_path.resolve().is_relative_to(folder.resolve())
