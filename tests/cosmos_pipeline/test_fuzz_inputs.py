"""Hostile inputs, generated: every media file and bundle is either read correctly or refused with a
one-paragraph InputError, never another exception.

Media files are real (PNGs of every colour type and bit depth written byte by byte, Pillow's other
modes in PNG, TIFF, BMP, JPEG and WebP, H.264/VP9 videos and GIFs, tiny and huge), then truncated
or bit-flipped; bundles carry misspelled and unknown keys and non-finite numbers, and point at such
files. test_policy.py fuzzes a bundle's JSON structure against the input and output roots; this file
fuzzes what bundles and media hold.

`make test` runs a few hundred examples in all. The long run sets the examples per test:

    FUZZ_EXAMPLES=1000 .venv/bin/python -m pytest tests/cosmos_pipeline/test_fuzz_inputs.py
"""

import json
import math
import os
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from cosmos_pipeline.bundle import BUNDLE_KEYS, printable
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.media import MIN_INPUT_SIDE, check_media, read_image, read_video, write_video
from cosmos_pipeline.policy import Policy, check_media_size
from tests.cosmos_pipeline.conftest import checked

from .media_files import ORIENTATIONS, PNG_TYPES, expected_rgb, png_bytes

# Not COSMOS_-prefixed: tests/conftest.py clears those so that no developer setting leaks into a test.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))  # 0: the quick counts of `make test`
# Damaged TIFF metadata makes Pillow warn (and skip the tag) before the file is read or refused.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")


def fuzz(quick: int) -> settings:
    return settings(
        max_examples=EXAMPLES or quick,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def refused(error: InputError) -> None:
    """A refusal a user can read: one paragraph, no traceback."""
    message = str(error)
    assert message.strip() and "\n\n" not in message and "Traceback" not in message, message


def damage(data: st.DataObject, raw: bytes) -> tuple[str, bytes]:
    """The file as written, cut short, or with a few bits flipped."""
    how = data.draw(st.sampled_from(["intact", "truncated", "flipped"]), label="damage")
    event(how)
    if how == "truncated":
        return how, raw[: data.draw(st.integers(0, len(raw) - 1), label="cut at")]
    flipped = bytearray(raw)
    if how == "flipped":
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            flipped[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    return how, bytes(flipped)


def read_checked(path: Path, read):
    """What the pipeline does with an input: the policy's header check (a bomb is never decoded), the
    pre-flight check, then the read. Returns the frames, or None once the refusal is checked; a check
    that passes promises a read."""
    try:
        check_media_size(path, Policy())
    except InputError as error:
        refused(error)
        event("refused from the header")
        return None
    try:
        check_media(path)
    except InputError as error:
        refused(error)
        event("refused")
        try:  # a refused file may still be readable (a tiny one is), but never with another exception
            read(path)
        except InputError as error:
            refused(error)
        return None
    return read(path)


# ----------------------------------------------------------------------------- images


@fuzz(200)
@given(data=st.data())
def test_any_png_is_read_as_the_spec_says_or_refused(tmp_path_factory, data):
    colour_type = data.draw(st.sampled_from(sorted(PNG_TYPES)), label="colour type")
    channels, depths = PNG_TYPES[colour_type]
    bit_depth = data.draw(st.sampled_from(depths), label="bit depth")
    height, width = (
        data.draw(st.integers(1, 40), label="height"),
        data.draw(st.integers(1, 40), label="width"),
    )
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    samples = rng.integers(0, 2**bit_depth, (height, width, channels))
    palette = rng.integers(0, 256, (2**bit_depth, 3)) if colour_type == 3 else None
    transparency = None
    if colour_type in (0, 2, 3) and data.draw(st.booleans(), label="tRNS"):
        pixel = samples[rng.integers(height), rng.integers(width)]
        entries = rng.integers(1, 2**bit_depth + 1)
        transparency = (
            rng.integers(0, 256, entries, dtype=np.uint8).tobytes()
            if colour_type == 3
            else pixel.astype(">u2").tobytes()
        )
    # A header that claims a huge size over a few bytes of data: a decompression bomb.
    claimed = data.draw(
        st.none() | st.tuples(st.integers(1, 2**20), st.integers(1, 2**20)), label="claimed size"
    )
    how, raw = damage(data, png_bytes(samples, colour_type, bit_depth, palette, transparency, size=claimed))
    path = tmp_path_factory.mktemp("png") / "in.png"
    path.write_bytes(raw)

    image = read_checked(path, read_image)
    if image is None:
        assert how != "intact" or claimed or min(height, width) < MIN_INPUT_SIDE
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    if how != "flipped" and not claimed:  # whole (a cut that only loses the end chunk still is): exact
        expected = expected_rgb(samples, colour_type, bit_depth, palette, transparency)
        assert np.abs(image - expected).max() <= 3


# Pillow modes, the formats that store them losslessly, and how each must read (None: Pillow's own RGB).
LOSSLESS = {
    "1": ("PNG", "TIFF", "BMP"),
    "L": ("PNG", "TIFF", "BMP"),
    "LA": ("PNG", "TIFF"),
    "P": ("PNG", "TIFF", "BMP"),
    "RGB": ("PNG", "TIFF", "BMP"),
    "RGBA": ("PNG", "TIFF"),
    "CMYK": ("TIFF",),
    "YCbCr": ("TIFF",),
    "LAB": ("TIFF",),
    "I;16": ("PNG", "TIFF"),
    "I;16B": ("TIFF",),
    "I": ("TIFF",),
    "F": ("TIFF",),
}
LOSSY = {"L": ("JPEG",), "RGB": ("JPEG", "WEBP"), "CMYK": ("JPEG",), "RGBA": ("WEBP",)}
SUFFIX = {"PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "JPEG": ".jpg", "WEBP": ".webp"}


def _samples(mode: str, height: int, width: int, rng: np.random.Generator, wild: bool) -> Image.Image:
    """A random image of `mode`; `wild` puts 32-bit and float samples outside the range that can be read."""
    if mode in ("I;16", "I;16B", "I"):
        high = 2**20 if wild and mode == "I" else 65536
        samples = rng.integers(-5 if wild and mode == "I" else 0, high, (height, width))
        dtype = {"I;16": np.uint16, "I;16B": ">u2", "I": np.int32}[mode]
        return Image.fromarray(samples.astype(dtype))
    if mode == "F":
        samples = rng.random((height, width)) * (3 if wild else 1)
        if wild and rng.random() < 0.3:
            samples[0, 0] = rng.choice([np.nan, np.inf])
        return Image.fromarray(samples.astype(np.float32))
    bands = len(Image.new(mode, (1, 1)).getbands())
    image = Image.frombytes(
        mode, (width, height), rng.integers(0, 256, height * width * bands, np.uint8).tobytes()
    )
    if mode == "P":
        image.putpalette(rng.integers(0, 256, 768, np.uint8).tobytes())
    if mode == "1":
        image = Image.fromarray(rng.random((height, width)) > 0.5)
    return image


def _expected(image: Image.Image) -> np.ndarray:
    """The float RGB a lossless file of `image` must read as, composited on white."""
    if image.mode in ("I;16", "I;16B", "I"):
        grey = np.asarray(image).astype(float) * 255 / 65535
    elif image.mode == "F":
        grey = np.asarray(image).astype(float) * 255
    elif image.mode == "1":
        grey = np.asarray(image).astype(float) * 255
    elif image.mode in ("LA", "RGBA"):
        rgba = np.asarray(image.convert("RGBA")).astype(float)
        alpha = rgba[..., 3:] / 255
        return np.rint(rgba[..., :3]) * alpha + 255 * (1 - alpha)
    else:
        return np.asarray(image.convert("RGB")).astype(float)  # L, P, RGB, CMYK, YCbCr, LAB
    return np.repeat(np.rint(grey)[..., None], 3, axis=-1)


@fuzz(200)
@given(data=st.data())
def test_any_image_mode_and_format_is_read_upright_or_refused(tmp_path_factory, data):
    lossy = data.draw(st.booleans(), label="lossy")
    modes = LOSSY if lossy else LOSSLESS
    mode = data.draw(st.sampled_from(sorted(modes)), label="mode")
    file_format = data.draw(st.sampled_from(modes[mode]), label="format")
    height, width = (
        data.draw(st.integers(1, 48), label="height"),
        data.draw(st.integers(1, 48), label="width"),
    )
    orientation = data.draw(st.sampled_from(sorted(ORIENTATIONS)), label="orientation")
    wild = data.draw(st.booleans(), label="samples out of range") if mode in ("I", "F") else False
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    image = _samples(mode, height, width, rng, wild)
    path = tmp_path_factory.mktemp("image") / f"in{SUFFIX[file_format]}"
    options = {"exif": Image.Exif()} if file_format != "BMP" else {}
    if options:
        options["exif"][0x0112] = orientation
    else:
        orientation = 1
    image.save(path, file_format, **options)
    how, raw = damage(data, path.read_bytes())
    path.write_bytes(raw)
    event(f"{mode} {file_format}")

    read = read_checked(path, read_image)
    upright = (width, height) if orientation in (5, 6, 7, 8) else (height, width)
    if read is None:
        assert how != "intact" or wild or min(height, width) < MIN_INPUT_SIDE
        return
    assert read.dtype == np.uint8 and read.ndim == 3 and read.shape[-1] == 3
    if how != "flipped":  # whole (a cut that only loses trailing metadata still is): upright and exact
        assert read.shape[:2] == upright
        if not lossy:
            assert np.abs(read - ORIENTATIONS[orientation](_expected(image))).max() <= 1


# ----------------------------------------------------------------------------- videos


def _ffmpeg(*args: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, np.ndarray]]:
    """Whole videos of several containers and codecs, and the frames they read as."""
    folder = tmp_path_factory.mktemp("videos")
    frames = np.random.default_rng(0).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)
    write_video(frames, folder / "faststart.mp4")  # index first
    source = ["-f", "lavfi", "-i", "testsrc2=size=48x32:rate=16", "-frames:v", "9", "-pix_fmt", "yuv420p"]
    _ffmpeg(*source, "-c:v", "libx264", str(folder / "index_last.mp4"))
    _ffmpeg(*source, "-c:v", "libvpx-vp9", str(folder / "clip.webm"))
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=32x32:rate=8", "-frames:v", "6", str(folder / "anim.gif"))
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=8x8:rate=16", "-frames:v", "5", "-pix_fmt", "yuv420p",
            str(folder / "tiny.mp4"))  # fmt: skip
    return {path.name: (path.read_bytes(), read_video(path)) for path in sorted(folder.iterdir())}


@fuzz(50)
@given(data=st.data())
def test_any_video_damage_is_refused_or_the_frames_are_right(tmp_path_factory, videos, data):
    name = data.draw(st.sampled_from(sorted(videos)), label="video")
    original, frames = videos[name]
    how, raw = damage(data, original)
    path = tmp_path_factory.mktemp("video") / name
    path.write_bytes(raw)
    event(name)

    read = read_checked(path, read_video)
    if read is None:
        assert how != "intact" or name == "tiny.mp4"
        return
    assert read.dtype == np.uint8 and read.ndim == 4 and read.shape[-1] == 3 and len(read) >= 1
    if how != "flipped":  # a cut that only loses trailing metadata still reads every frame, exactly
        np.testing.assert_array_equal(read, frames)
    # Flipped bits the decoder cannot notice (H.264 has no checksum) decode to other pixels: undetectable.


# ----------------------------------------------------------------------------- bundles


def _typos(key: str) -> st.SearchStrategy[str]:
    """`key` with one letter dropped, doubled, swapped with the next, or replaced."""

    def edit(position: int, kind: int, letter: str) -> str:
        i = position % len(key)
        dropped, doubled = key[:i] + key[i + 1 :], key[:i] + key[i] + key[i:]
        swapped, replaced = (
            key[:i] + key[i + 1 : i + 2] + key[i] + key[i + 2 :],
            key[:i] + letter + key[i + 1 :],
        )
        return (dropped, doubled, swapped, replaced)[kind]

    return st.builds(edit, st.integers(0, 40), st.integers(0, 3), st.sampled_from("aeiou_sxt"))


def mostly(common: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """`common` seven times in ten, so that many bundles get as far as their media."""
    return st.integers(0, 9).flatmap(lambda n: common if n < 7 else rare)


KEYS = sorted(BUNDLE_KEYS)
ANY_KEY = mostly(
    st.sampled_from(KEYS), st.sampled_from(KEYS).flatmap(_typos) | st.text(min_size=1, max_size=12)
)
VALUES = st.floats() | st.integers(-(2**70), 2**70) | st.text(max_size=12) | st.booleans() | st.none()
PLAUSIBLE = {  # values a bundle's author means, so that many bundles get as far as their media
    "num_output_frames": [1, 9, 17, 93, 97], "num_frames": [1, 9], "num_steps": [1, 4, 36],
    "guidance": [0, 1.0, 7], "guidance_scale": [3.5], "seed": [0, 7, 2**40],
    "resolution": ["256p", "480,640", "none", 720, "64,112"],
    "height": [64, 256, 100], "width": [112, 448], "fit": ["crop", "stretch"], "negative_prompt": ["blurry"],
    "name": ["a", "../up", "x y"], "num_latent_conditional_frames": [1, 2], "inference_type": ["video2world"],
    "enable_autoregressive": [True], "lora_scale": [0.5], "chunk_size": [77], "chunk_overlap": [1, 2],
    "prompt": ["a red ball rolls"], "dtype": ["float32"], "guardrail": ["off"], "device": ["cpu"],
    "model_id": ["embedded:tiny"], "revision": ["main"], "overwrite": [True], "cfg_parallel": ["off"],
}  # fmt: skip


def _value(key: str) -> st.SearchStrategy:
    return mostly(st.sampled_from(PLAUSIBLE[key]), VALUES) if key in PLAUSIBLE else VALUES


MEDIA = [
    "photo16.png",
    "photo.jpg",
    "dot.png",
    "clip.mp4",
    "cut.mp4",
    "noise.mp4",
    "missing.png",
    "palette.png",
]


@pytest.fixture(scope="module")
def media_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bundle-media")
    rng = np.random.default_rng(0)
    (folder / "photo16.png").write_bytes(
        png_bytes(rng.integers(0, 65536, (32, 48, 3)), colour_type=2, bit_depth=16)
    )
    Image.fromarray(rng.integers(0, 256, (40, 64, 3), np.uint8)).save(folder / "photo.jpg")
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    Image.new("RGBA", (32, 32), (255, 0, 0, 128)).quantize(4).save(folder / "palette.png")
    clip = write_video(rng.integers(0, 256, (9, 32, 48, 3), np.uint8), folder / "clip.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(clip[: len(clip) * 2 // 3])
    (folder / "noise.mp4").write_bytes(rng.bytes(3000))
    return folder


def _finite(value: object) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


@fuzz(200)
@given(
    extra=st.lists(ANY_KEY.filter(lambda key: key != "_where"), unique=True, max_size=4).flatmap(
        lambda keys: st.fixed_dictionaries({key: _value(key) for key in keys})
    ),
    media=st.none() | st.sampled_from(MEDIA),
)
@example(extra={"\n\n": None}, media=None)  # found by this test: a key of newlines broke the report's lines
@example(extra={"lora_scale": math.inf, "negative_prompt_path": ""}, media=None)  # found: one hid the other
@example(extra={"negative_prompt_path": "\x00"}, media=None)  # found: a NUL in a path was a ValueError
def test_any_bundle_gives_valid_requests_or_names_what_is_wrong(tmp_path_factory, media_folder, extra, media):
    folder = tmp_path_factory.mktemp("bundle")
    entry = {"prompt": "a robot arm stacks boxes", "num_output_frames": 9, **extra}
    if media is not None:
        entry["input_path"] = str(media_folder / media)
    bundle = folder / "b.json"
    bundle.write_text(json.dumps(entry))  # NaN and Infinity as Python's json writes (and reads) them
    unknown = sorted(set(entry) - BUNDLE_KEYS)
    non_finite = [key for key in ("guidance", "guidance_scale", "lora_scale") if not _finite(entry.get(key))]
    event("unknown key" if unknown else "non-finite" if non_finite else "known keys")

    try:
        requests = checked({"input_path": str(bundle), "output_path": str(folder / "out")})
    except InputError as error:
        refused(error)
        event("refused")
        for key in unknown:
            assert f"`{printable(key)}`: unknown key" in str(error)
        if non_finite and not unknown:
            assert "finite number" in str(error)
        return
    assert not unknown and not non_finite
    [request] = requests
    event(f"accepted: {request.mode}")
    assert request.prompt and request.output_path.parent == folder / "out"
    if request.source == "image":
        assert read_image(request.input_path, (request.height, request.width)).dtype == np.uint8
    elif request.source == "video":
        frames = read_video(request.input_path, max_frames=request.conditioning_frames, last=True)
        assert len(frames) == request.conditioning_frames
