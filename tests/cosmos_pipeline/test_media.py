import logging
import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image, ImageCms

from cosmos_pipeline import media
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.media import (
    MIN_INPUT_SIDE,
    check_media,
    check_output_path,
    content_hash,
    fit_frames,
    media_kind,
    read_image,
    read_video,
    write_image,
    write_video,
)

from .conftest import ASSETS, checked
from .media_files import ORIENTATIONS, PNG_TYPES, expected_rgb, png_bytes


def _frames(num_frames: int = 9, height: int = 64, width: int = 96) -> np.ndarray:
    """Frames whose brightness encodes their index, so order survives lossy H.264."""
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        frames[i] = 20 + i * (200 // max(num_frames - 1, 1))
    frames[:, : height // 2, : width // 2, 0] = 255  # a red quadrant, to check channel order
    return frames


def _probe(path: Path) -> str:
    """ffmpeg's description of the file's streams (its stderr for `-i` without an output)."""
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stderr


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray(np.full((24, 32, 3), 128, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def mp4(tmp_path: Path) -> Path:
    return write_video(_frames(), tmp_path / "in.mp4")


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if ".tmp" in p.name]


# ----------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    ("name", "kind"), [("a.png", "image"), ("a.JPEG", "image"), ("a.mp4", "video"), ("a.GIF", "video")]
)
def test_media_kind_by_suffix(name, kind):
    assert media_kind(Path(name)) == kind


def test_media_kind_unsupported_lists_suffixes():
    with pytest.raises(InputError, match=r"'\.heic'.*\.png.*\.tiff.*\.mp4"):
        media_kind(Path("photo.heic"))


def test_check_media_accepts_good_files(png, mp4):
    assert check_media(png) == "image"
    assert check_media(mp4) == "video"


def test_check_media_missing(tmp_path):
    with pytest.raises(InputError, match="missing.*nope.png"):
        check_media(tmp_path / "nope.png")


def test_check_media_unsupported_suffix(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InputError, match="unsupported media type '.txt'"):
        check_media(path)


def test_check_media_directory_is_not_readable(tmp_path):
    path = tmp_path / "x.png"
    path.mkdir()
    with pytest.raises(InputError, match="not readable.*x.png"):
        check_media(path)


def test_check_media_corrupt_image(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(InputError, match="corrupt or not an image.*noise.png"):
        check_media(path)


def test_check_media_corrupt_video(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(InputError, match=r"corrupt or not a video: .*noise.mp4: .*is not an MP4"):
        check_media(path)
    with pytest.raises(InputError, match="corrupt or not a video"):
        read_video(path)


def test_truncated_video_is_refused_with_the_reason(tmp_path):
    """The frames decoded before the truncation are never used (ffmpeg itself exits 0 on this file)."""
    path = tmp_path / "cut.mp4"
    path.write_bytes((ASSETS / "media" / "rolling_ball.mp4").read_bytes()[:5000])
    reason = r"corrupt or not a video: .*cut.mp4: the file is truncated \(.*partial file\)"
    for read in (check_media, read_video, lambda p: read_video(p, max_frames=1)):
        with pytest.raises(InputError, match=reason):
            read(path)
    with pytest.raises(InputError, match=reason):  # the case: one conditioning frame
        checked(
            {"input_path": str(path), "prompt": "p", "num_latent_conditional_frames": 1,
             "output_path": str(tmp_path / "out.mp4")}
        )  # fmt: skip


def test_corrupt_frame_in_a_complete_video_is_refused(tmp_path):
    """Damage inside the frame data: the container is whole, ffmpeg conceals it and exits 0. (Damage
    that still decodes, e.g. zeros where H.264 allows them, is undetectable: the format has no checksum.)"""
    frames = np.random.default_rng(0).integers(0, 256, (9, 64, 96, 3), dtype=np.uint8)
    data = bytearray(write_video(frames, tmp_path / "noise.mp4").read_bytes())
    start = data.index(b"mdat") + 700  # past x264's settings text, inside the first frame
    data[start : start + 1024] = b"\xff" * 1024
    path = tmp_path / "damaged.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"corrupt or not a video: .*damaged.mp4: \S"):
        check_media(path)


# ----------------------------------------------------------------------------- image modes


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    gradient = np.arange(0, 65536, 8192)[None, :, None].repeat(MIN_INPUT_SIDE, axis=0).repeat(2, axis=1)
    path = tmp_path / "gradient16.png"
    path.write_bytes(png_bytes(np.minimum(gradient, 65535), colour_type=0, bit_depth=16))
    assert Image.open(path).mode == "I;16"
    image = read_image(path)
    np.testing.assert_array_equal(image[0, ::2, 0], [0, 32, 64, 96, 128, 159, 191, 223])
    assert (image == image[..., :1]).all()  # grey stays grey


PNG_CASES = [
    (colour_type, bit_depth, transparent)
    for colour_type, (_, depths) in PNG_TYPES.items()
    for bit_depth in depths
    for transparent in ((False, True) if colour_type in (0, 2, 3) else (False,))  # 4 and 6 carry alpha
]


@pytest.mark.parametrize(("colour_type", "bit_depth", "transparent"), PNG_CASES)
def test_every_png_colour_type_and_bit_depth(tmp_path, colour_type, bit_depth, transparent):
    """Against the PNG spec: samples scaled to 0-255, palettes looked up, transparency on white."""
    rng = np.random.default_rng(colour_type * 100 + bit_depth)
    samples = rng.integers(0, 2**bit_depth, (MIN_INPUT_SIDE, 24, PNG_TYPES[colour_type][0]))
    palette = rng.integers(0, 256, (2**bit_depth, 3)) if colour_type == 3 else None
    transparency = None
    if transparent:  # the first pixel's colour (grey, RGB) or the first palette entries
        transparency = (
            bytes(rng.integers(0, 256, min(3, 2**bit_depth), dtype=np.uint8))
            if colour_type == 3
            else samples[0, 0].astype(">u2").tobytes()
        )
    path = tmp_path / "in.png"
    path.write_bytes(png_bytes(samples, colour_type, bit_depth, palette, transparency))
    image = read_image(path)
    assert image.shape == (MIN_INPUT_SIDE, 24, 3) and image.dtype == np.uint8
    # Pillow cuts 16-bit RGB(A) and alpha to their high byte, then compositing rounds: within 3.
    assert np.abs(image - expected_rgb(samples, colour_type, bit_depth, palette, transparency)).max() <= 3
    if transparent:
        assert (image[0, 0] == 255).all() if colour_type != 3 else True  # the key colour is white now


def _tiff_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(mode, samples Pillow writes, the 8-bit grey or RGB they must read as)."""
    ramp = np.linspace(0, 1, 24)[None].repeat(MIN_INPUT_SIDE, axis=0)
    grey16 = np.rint(ramp * 65535).astype(np.uint16)
    expected_grey = np.rint(ramp * 255)
    rgb = np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 0.5)], axis=-1)
    return [
        ("I;16", grey16, expected_grey),
        ("I;16B", grey16.astype(">u2"), expected_grey),
        ("I", grey16.astype(np.int32), expected_grey),
        ("F", ramp.astype(np.float32), expected_grey),
        ("L", np.rint(ramp * 255).astype(np.uint8), expected_grey),
        ("1", ramp > 0.5, np.where(ramp > 0.5, 255, 0)),
        ("RGB", np.rint(rgb * 255).astype(np.uint8), np.rint(rgb * 255)),
    ]


@pytest.mark.parametrize(("mode", "samples", "expected"), _tiff_cases(), ids=lambda case: str(case)[:5])
def test_tiff_modes_are_scaled_to_8_bits(tmp_path, mode, samples, expected):
    path = tmp_path / "in.tif"
    Image.fromarray(samples).save(path)
    assert Image.open(path).mode == mode
    image = read_image(path).astype(float)
    expected = expected if expected.ndim == 3 else np.repeat(expected[..., None], 3, axis=-1)
    assert np.abs(image - expected).max() <= 0.5


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (
            np.full((16, 16), 2.5, np.float32),
            r"floating-point samples from 2\.5 to 2\.5, outside the 0-1 range",
        ),
        (np.full((16, 16), np.nan, np.float32), "floating-point samples from nan"),
        (np.full((16, 16), -7, np.int32), r"32-bit integer samples from -7 to -7, outside the 0-65535"),
    ],
)
def test_samples_without_a_brightness_are_refused(tmp_path, samples, message):
    path = tmp_path / "odd.tiff"
    Image.fromarray(samples).save(path)
    with pytest.raises(InputError, match=f"odd.tiff has {message}.*save it as 8- or 16-bit"):
        check_media(path)


def test_palette_alpha_and_grey_alpha_are_composited_on_white(tmp_path, caplog):
    rgba = np.zeros((MIN_INPUT_SIDE, 16, 4), np.uint8)
    rgba[..., 0] = 200  # red, fully transparent on the left, half on the right
    rgba[:, 8:, 3] = 128
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgba).convert("LA").save(tmp_path / "la.tif")
    palette = Image.fromarray(rgba).quantize(colors=4, method=Image.Quantize.FASTOCTREE)
    palette.save(tmp_path / "palette.png")
    with caplog.at_level(logging.INFO, logger="cosmos_pipeline.media"):
        image = read_image(tmp_path / "rgba.png")
    assert "rgba.png has transparent pixels: composited on white" in caplog.text
    np.testing.assert_array_equal(image[0, 0], [255, 255, 255])
    np.testing.assert_allclose(image[0, -1], [228, 127, 127], atol=1)  # 200*a + 255*(1-a), a = 128/255
    for name in ("la.tif", "palette.png"):
        image = read_image(tmp_path / name).astype(int)
        assert (image[:, :8] == 255).all() and (np.abs(image[:, 8:] - image[0, -1]) <= 1).all(), name


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    inks = {
        "cyan": (255, 0, 0, 0),
        "magenta": (0, 255, 0, 0),
        "yellow": (0, 0, 255, 0),
        "black": (0, 0, 0, 255),
    }
    rgb = {"cyan": (0, 255, 255), "magenta": (255, 0, 255), "yellow": (255, 255, 0), "black": (0, 0, 0)}
    for name, ink in inks.items():
        path = tmp_path / f"{name}.jpg"
        Image.new("CMYK", (32, 32), ink).save(path, quality=95)
        assert Image.open(path).mode == "CMYK"
        np.testing.assert_allclose(read_image(path)[16, 16], rgb[name], atol=8, err_msg=name)


def test_colour_profile_is_applied_and_a_broken_one_is_reported(tmp_path, caplog):
    pixels = np.random.default_rng(0).integers(0, 256, (MIN_INPUT_SIDE, 20, 3), dtype=np.uint8)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(pixels).save(tmp_path / "srgb.png", icc_profile=srgb)
    assert np.abs(read_image(tmp_path / "srgb.png").astype(int) - pixels).max() <= 1
    Image.fromarray(pixels).save(tmp_path / "broken.png", icc_profile=b"not a profile" * 10)
    np.testing.assert_array_equal(read_image(tmp_path / "broken.png"), pixels)
    assert "broken.png: its colour profile cannot be applied" in caplog.text


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("name", ["photo.png", "scan.tif"])
def test_exif_orientation_is_applied(tmp_path, orientation, name):
    """PNG carries EXIF; Pillow turns a TIFF itself (and scrambled a grey one opened by name)."""
    stored = np.random.default_rng(orientation).integers(0, 256, (MIN_INPUT_SIDE, 24, 1), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored[..., 0]).save(tmp_path / name, exif=exif)
    upright = np.repeat(ORIENTATIONS[orientation](stored), 3, axis=-1)
    np.testing.assert_array_equal(read_image(tmp_path / name), upright)


def test_large_jpeg_is_decoded_at_the_scale_it_is_fitted_to(tmp_path):
    """A 5472x3648 photo (the upstream example's size) fitted to 704x1280 decodes at 1/4 scale; a portrait
    photo (EXIF orientation 6) is scaled in its upright orientation."""
    channels = [Image.linear_gradient("L"), Image.radial_gradient("L"), Image.new("L", (256, 256))]
    photo = Image.merge("RGB", channels).resize((5472, 3648))
    photo.save(tmp_path / "photo.jpg", quality=90)
    assert check_media(tmp_path / "photo.jpg") == "image"
    assert read_image(tmp_path / "photo.jpg", size=(704, 1280)).shape == (912, 1368, 3)
    assert read_image(tmp_path / "photo.jpg", size=(352, 640)).shape == (456, 684, 3)  # 1/8 scale
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(tmp_path / "portrait.jpg", quality=90, exif=exif)
    assert read_image(tmp_path / "portrait.jpg", size=(1280, 704)).shape == (1368, 912, 3)


def test_tiny_input_is_refused_and_a_big_upscale_warned(tmp_path, caplog):
    Image.new("RGB", (1, 1), "red").save(tmp_path / "dot.png")
    with pytest.raises(InputError, match=r"dot.png is 1x1 pixels \(width x height\); at least 16 a side"):
        check_media(tmp_path / "dot.png")
    write_video(_frames(height=8, width=96), tmp_path / "strip.mp4")
    with pytest.raises(InputError, match=r"strip.mp4 is 96x8 pixels"):
        check_media(tmp_path / "strip.mp4")
    Image.new("RGB", (40, 20), "red").save(tmp_path / "small.png")
    with caplog.at_level(logging.WARNING, logger="cosmos_pipeline.media"):
        check_media(tmp_path / "small.png", size=(80, 160))  # 4x: no warning
        assert not caplog.records
        check_media(tmp_path / "small.png", size=(256, 448))
    assert (
        "small.png is 40x20 pixels (width x height): fitting it to the 448x256 output upscales it 12.8x"
        in (caplog.text)
    )


def test_read_video_first_and_last_frames(mp4):
    frames = read_video(mp4)
    assert frames.shape == (9, 64, 96, 3) and frames.dtype == np.uint8
    brightness = frames[:, -1, -1].mean(axis=-1)  # bottom-right pixel of each frame
    np.testing.assert_array_equal(read_video(mp4, max_frames=3), frames[:3])
    np.testing.assert_array_equal(read_video(mp4, max_frames=3, last=True), frames[-3:])
    assert brightness[-1] > brightness[-3] > brightness[0]
    assert read_video(mp4, max_frames=50, last=True).shape[0] == 9


# ----------------------------------------------------------------------------- resizing


def test_fit_frames_crop_keeps_centre_without_distortion():
    # 2:1 image: a black 40x40 square in the middle of a white 40x80 image, vertical stripes at the sides.
    image = np.full((40, 80, 3), 255, dtype=np.uint8)
    image[:, 20:60] = 0
    image[:, :4] = image[:, -4:] = (255, 0, 0)
    fitted = fit_frames(image, 20, 20, mode="crop")
    assert fitted.shape == (20, 20, 3)
    # The centred square fills the whole 1:1 output (up to Lanczos ringing); the sides are cropped away.
    assert fitted.max() < 40 and fitted[:, 1:-1].max() < 5
    stretched = fit_frames(image, 20, 20, mode="stretch")
    assert stretched.shape == (20, 20, 3)
    assert stretched[10, 0, 0] > 200 and stretched[10, 10].max() < 10  # stretched keeps the sides


def test_fit_frames_crop_keeps_circle_round():
    yy, xx = np.mgrid[:90, :160]
    disc = ((yy - 45) ** 2 + (xx - 80) ** 2 <= 30**2).astype(np.uint8) * 255
    image = np.repeat(disc[..., None], 3, axis=-1)
    out = fit_frames(np.stack([image, image]), 64, 64, mode="crop")[0, ..., 0] > 127
    rows, cols = np.nonzero(out)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1  # still round
    assert out[32, 32]  # still centred


def test_fit_frames_stretch_exact_size_and_rank():
    frames = _frames(num_frames=3, height=30, width=50)
    out = fit_frames(frames, 48, 64, mode="stretch")
    assert out.shape == (3, 48, 64, 3) and out.dtype == np.uint8
    assert fit_frames(frames[0], 48, 64).shape == (48, 64, 3)


def test_fit_frames_same_size_is_a_no_op():
    frames = _frames(num_frames=2)
    assert fit_frames(frames, 64, 96) is frames


def test_fit_frames_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        fit_frames(np.zeros((4, 4, 3), dtype=np.float32), 2, 2)
    with pytest.raises(ValueError, match="mode"):
        fit_frames(np.zeros((4, 4, 3), dtype=np.uint8), 2, 2, mode="pad")


# ----------------------------------------------------------------------------- writers


def test_write_video_round_trip_is_browser_playable(tmp_path):
    frames = _frames(num_frames=17)
    path = write_video(frames, tmp_path / "sub" / "dir" / "out.mp4", fps=16)
    back = read_video(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 3  # CRF 18 is near-lossless
    info = _probe(path)
    assert re.search(r"Video: h264 .*yuv420p", info), info
    assert "16 fps" in info
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: the index comes first
    assert _no_temp_files(path.parent)


def test_write_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="at least 2 frames"):
        write_video(_frames(num_frames=1), tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="even"):
        write_video(_frames(height=63), tmp_path / "a.mp4")
    with pytest.raises(InputError, match=r"\.mp4"):
        write_video(_frames(), tmp_path / "a.gif")


def test_write_image_round_trip_exact(tmp_path):
    frame = np.random.default_rng(0).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    path = write_image(frame, tmp_path / "new" / "out.png")
    np.testing.assert_array_equal(read_image(path), frame)
    assert _no_temp_files(path.parent)


@pytest.mark.parametrize(
    ("write", "data", "name"),
    [(write_video, _frames(num_frames=2), "out.mp4"), (write_image, _frames(num_frames=1)[0], "out.png")],
)
def test_overwrite_refused_unless_asked(tmp_path, write, data, name):
    path = tmp_path / name
    path.write_bytes(b"precious")
    with pytest.raises(InputError, match="output exists.*--overwrite") as excinfo:
        write(data, path)
    assert isinstance(excinfo.value, FileExistsError)
    assert path.read_bytes() == b"precious"
    write(data, path, overwrite=True)
    assert path.read_bytes() != b"precious"
    assert _no_temp_files(tmp_path)


def test_no_clobber_when_target_appears_during_write(tmp_path, monkeypatch):
    """A concurrent writer that creates the target mid-write wins; our file is discarded."""
    path = tmp_path / "out.png"
    real_save = Image.Image.save

    def save_then_race(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        path.write_bytes(b"other writer")

    monkeypatch.setattr(Image.Image, "save", save_then_race)
    with pytest.raises(InputError, match="output exists"):
        write_image(_frames(num_frames=1)[0], path)
    assert path.read_bytes() == b"other writer"
    assert _no_temp_files(tmp_path)


@pytest.mark.parametrize(
    "frames",
    [
        _frames().astype(np.float32),  # wrong dtype
        _frames()[..., :2],  # wrong channel count
        np.zeros((3, 8, 8), dtype=np.uint8),  # wrong rank
    ],
)
def test_invalid_frames_leave_nothing_behind(tmp_path, frames):
    with pytest.raises(ValueError):
        write_video(frames, tmp_path / "out.mp4")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fail_after", [0, 3])
def test_failure_mid_write_leaves_nothing_behind(tmp_path, monkeypatch, fail_after):
    """The encoder fails after some frames: neither the target nor the temp file survives."""
    real_get_writer = media.imageio.get_writer

    def failing_get_writer(*args, **kwargs):
        writer = real_get_writer(*args, **kwargs)
        real_append, calls = writer.append_data, []

        def append_data(frame):
            if len(calls) == fail_after:
                raise RuntimeError("disk on fire")
            calls.append(1)
            real_append(frame)

        writer.append_data = append_data
        return writer

    monkeypatch.setattr(media.imageio, "get_writer", failing_get_writer)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_video(_frames(), tmp_path / "out.mp4")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- output pre-flight


def test_check_output_path_accepts_good_paths(tmp_path):
    check_output_path(tmp_path / "a" / "b" / "out.mp4", num_frames=93, overwrite=False)
    check_output_path(tmp_path / "out.png", num_frames=1, overwrite=False)
    assert list(tmp_path.iterdir()) == []  # creates nothing


def test_check_output_path_suffix_matches_frame_count(tmp_path):
    with pytest.raises(InputError, match=r"93 frames.*MP4.*out\.mp4"):
        check_output_path(tmp_path / "out.png", num_frames=93, overwrite=False)
    with pytest.raises(InputError, match=r"1 frame.*PNG.*out\.png"):
        check_output_path(tmp_path / "out.mp4", num_frames=1, overwrite=False)


def test_check_output_path_existing(tmp_path):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"x")
    with pytest.raises(InputError, match="output exists.*--overwrite"):
        check_output_path(path, num_frames=5, overwrite=False)
    check_output_path(path, num_frames=5, overwrite=True)


def test_check_output_path_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    with pytest.raises(InputError, match="output directory not writable.*afile"):
        check_output_path(tmp_path / "afile" / "deeper" / "out.mp4", num_frames=5, overwrite=False)


def test_content_hash_is_stable_and_content_based(tmp_path, png):
    import hashlib

    copy = tmp_path / "copy.png"
    copy.write_bytes(png.read_bytes())
    assert content_hash(png) == content_hash(copy) == hashlib.sha256(png.read_bytes()).hexdigest()
    copy.write_bytes(png.read_bytes() + b"\0")
    assert content_hash(copy) != content_hash(png)
