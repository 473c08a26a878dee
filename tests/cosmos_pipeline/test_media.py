import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from cosmos_pipeline import media
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.media import (
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
    with pytest.raises(InputError, match=r"'\.tiff'.*\.png.*\.mp4"):
        media_kind(Path("scan.tiff"))


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
    with pytest.raises(InputError, match=r"corrupt or not a video: .*noise.mp4: \S"):
        check_media(path)
    with pytest.raises(InputError, match="corrupt or not a video"):
        read_video(path)


def test_read_image_converts_to_rgb(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((8, 10), 7, dtype=np.uint8), mode="L").save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.full((8, 10, 4), 9, dtype=np.uint8), mode="RGBA").save(rgba)
    palette = tmp_path / "palette.png"
    Image.new("P", (10, 8), color=3).save(palette)
    for path in (gray, rgba, palette):
        image = read_image(path)
        assert image.shape == (8, 10, 3) and image.dtype == np.uint8
    assert (read_image(gray) == 7).all()


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
