"""Media IO: check, read, fit and write images and videos.

Inputs are checked here before any model loads, so a bad file costs milliseconds, not a model load.
Outputs are written atomically (temp file in the same directory, then rename) and never replace an
existing file unless asked, so an interrupted or concurrent run cannot leave a half-written or
clobbered result behind.

Videos are decoded and encoded with the ffmpeg binary that `imageio-ffmpeg` ships, so no system
ffmpeg is needed.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageOps

from .errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".webm", ".mkv", ".gif"})

MediaKind = Literal["image", "video"]
FitMode = Literal["crop", "stretch"]

# Visually near-lossless H.264; the generated videos are small, so size is not a concern.
VIDEO_CRF = 18

_IMAGE_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_FFMPEG_PROBLEM = re.compile(r"invalid|error|not found|corrupt|unsupported|unknown", re.IGNORECASE)


class OutputExistsError(InputError, FileExistsError):
    """The output file exists and overwriting was not requested."""


# ----------------------------------------------------------------------------- inputs


def media_kind(path: Path) -> MediaKind:
    """Classify `path` as an image or a video by its suffix (case-insensitive)."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    raise InputError(
        f"unsupported media type {suffix or '(no suffix)'!r} for {path}; use an image "
        f"({', '.join(sorted(IMAGE_SUFFIXES))}) or a video ({', '.join(sorted(VIDEO_SUFFIXES))})"
    )


def check_media(path: Path) -> MediaKind:
    """Pre-flight check of an input file: it exists, is readable, has a supported suffix and decodes.

    Only the first frame of a video is decoded, so the check stays cheap on long videos.
    """
    path = Path(path)
    _check_readable_file(path)
    kind = media_kind(path)
    if kind == "image":
        _load_image(path)
    else:
        frames = _iter_video_frames(path)
        try:
            next(frames)
        finally:
            frames.close()  # stops ffmpeg after the first frame
    return kind


def read_image(path: Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB.

    Grayscale and palette images are expanded and alpha is dropped (as `diffusers.utils.load_image`
    does); EXIF orientation is applied so phone photos are upright.
    """
    path = Path(path)
    _check_readable_file(path)
    image = ImageOps.exif_transpose(_load_image(path))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_video(path: Path, max_frames: int | None = None, last: bool = False) -> np.ndarray:
    """Read a video as (T, H, W, 3) uint8 RGB.

    With `max_frames`, keep the first `max_frames` frames, or the last ones when `last=True`
    (Video2World conditions on the end of the input video). Only those frames are held in memory.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    path = Path(path)
    _check_readable_file(path)
    frames_iter = _iter_video_frames(path)
    if max_frames is None:
        frames = list(frames_iter)
    elif last:
        frames = list(deque(frames_iter, maxlen=max_frames))
    else:
        frames = []
        for frame in frames_iter:
            frames.append(frame)
            if len(frames) == max_frames:
                frames_iter.close()  # stops ffmpeg instead of decoding the rest
                break
    return np.stack(frames)


def content_hash(path: Path) -> str:
    """SHA-256 hex digest of the file's bytes, recorded with a run to identify its inputs."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_readable_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"input media missing: {path} does not exist; check the path")
    if not path.is_file():
        raise InputError(f"input media not readable: {path} is not a regular file; pass an image or video")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise InputError(
            f"input media not readable: {path} ({err.strerror or err}); fix its permissions or copy it"
        ) from err


def _load_image(path: Path) -> Image.Image:
    """Open and fully decode an image (`Image.open` alone only reads the header)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except _IMAGE_DECODE_ERRORS as err:
        raise InputError(f"input media corrupt or not an image: {path}: {err}") from err


def _iter_video_frames(path: Path) -> Iterator[np.ndarray]:
    """Yield decoded frames; raises InputError if the file does not decode or has no frames."""
    import imageio_ffmpeg  # here, not at the top: the core imports without it where no video is read

    # Only the first video stream, one output frame per decoded frame (no duplication to a fixed rate).
    reader = imageio_ffmpeg.read_frames(
        str(path), pix_fmt="rgb24", output_params=["-map", "0:v:0", "-fps_mode", "passthrough"]
    )
    try:
        try:
            meta = next(reader)
            width, height = meta["size"]
            count = 0
            for buffer in reader:
                count += 1
                yield np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3)
        except (OSError, RuntimeError) as err:
            raise InputError(f"input media corrupt or not a video: {path}: {_decoder_message(err)}") from err
        if count == 0:
            raise InputError(f"input media corrupt or not a video: {path}: no frames could be decoded")
    finally:
        reader.close()


def _decoder_message(err: Exception) -> str:
    """The most telling line of ffmpeg's log (the first problem it reports), without `[... @ 0x..]`."""
    noise = ("Conversion failed!", "frame=", "=== stderr ===", "Could not load meta", "configuration:")
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line and not line.startswith(noise)]
    problems = [line for line in lines if _FFMPEG_PROBLEM.search(line)]
    if problems:
        return problems[0]
    return lines[-1] if lines else type(err).__name__


# ----------------------------------------------------------------------------- resizing


def fit_frames(frames: np.ndarray, height: int, width: int, mode: FitMode = "crop") -> np.ndarray:
    """Resize (T, H, W, 3) or (H, W, 3) uint8 frames to `height` x `width`; the rank is preserved.

    "crop" scales to cover the target and centre-crops, so nothing is distorted; "stretch" ignores
    the aspect ratio, as the upstream script does. Frames already of the target size are returned
    as they are.
    """
    if mode not in ("crop", "stretch"):
        raise ValueError(f"mode must be 'crop' or 'stretch', got {mode!r}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    _check_frames(frames, ranks=(3, 4), name="frames")
    batch = frames if frames.ndim == 4 else frames[None]
    src_h, src_w = batch.shape[1:3]
    if (src_h, src_w) == (height, width):
        return frames

    box = (0.0, 0.0, float(src_w), float(src_h))
    if mode == "crop":
        # The largest centred source region with the target's aspect ratio, resampled in one step.
        scale = min(src_w / width, src_h / height)
        crop_w, crop_h = width * scale, height * scale
        left, top = (src_w - crop_w) / 2, (src_h - crop_h) / 2
        box = (left, top, left + crop_w, top + crop_h)
    out = np.stack(
        [
            np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.LANCZOS, box=box))
            for f in batch
        ]
    )
    return out if frames.ndim == 4 else out[0]


# ----------------------------------------------------------------------------- outputs


def check_output_path(path: Path, num_frames: int, overwrite: bool) -> None:
    """Pre-flight check of an output path, before any model loads; creates nothing.

    One frame is written as PNG, more as MP4; the path must not exist unless `overwrite`, and the
    directory it goes in (or the nearest existing ancestor, since parents are created) must be
    writable.
    """
    path = Path(path)
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1, got {num_frames}")
    expected = ".png" if num_frames == 1 else ".mp4"
    if path.suffix.lower() != expected:
        what = (
            "1 frame is written as a PNG" if num_frames == 1 else f"{num_frames} frames are written as an MP4"
        )
        raise InputError(
            f"output path {path} has suffix {path.suffix or '(none)'!r}, but {what}; "
            f"use e.g. {path.with_suffix(expected)}"
        )
    if path.is_dir():
        raise InputError(f"output path {path} is a directory; give a file path ending in {expected}")
    if path.exists() and not overwrite:
        raise _exists_error(path)

    ancestor = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not ancestor.is_dir():
        raise InputError(f"output directory not writable: {path.parent} ({ancestor} is not a directory)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"output directory not writable: {ancestor}; choose another --output_path")


def write_video(frames: np.ndarray, path: Path, fps: int = 16, overwrite: bool = False) -> Path:
    """Write (T, H, W, 3) uint8 frames as an H.264 MP4 that browsers (and MLflow's UI) play.

    yuv420p and `+faststart` (index before the data) are what browsers need to stream the file.
    """
    path = Path(path)
    _check_frames(frames, ranks=(4,), name="frames")
    if frames.shape[0] < 2:
        raise ValueError(f"a video needs at least 2 frames, got {frames.shape[0]}; write one frame as a PNG")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:  # yuv420p subsamples chroma 2x2; refuse rather than resize silently
        raise ValueError(f"H.264 yuv420p needs an even height and width, got {height}x{width}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    _check_suffix(path, ".mp4")

    def encode(tmp: Path) -> None:
        writer = imageio.get_writer(
            tmp,
            format="FFMPEG",
            mode="I",
            fps=fps,
            codec="libx264",
            pixelformat="yuv420p",
            quality=None,  # quality is set by the CRF below
            macro_block_size=1,  # sizes were checked above; never let imageio resize
            ffmpeg_log_level="error",
            output_params=["-crf", str(VIDEO_CRF), "-movflags", "+faststart"],
        )
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()

    return _write_atomic(path, encode, overwrite)


def write_image(frame: np.ndarray, path: Path, overwrite: bool = False) -> Path:
    """Write an (H, W, 3) uint8 frame as a PNG (lossless, so it round-trips exactly)."""
    path = Path(path)
    _check_frames(frame, ranks=(3,), name="frame")
    _check_suffix(path, ".png")
    image = Image.fromarray(frame, mode="RGB")
    return _write_atomic(path, lambda tmp: image.save(tmp, format="PNG"), overwrite)


def _write_atomic(path: Path, write: Callable[[Path], None], overwrite: bool) -> Path:
    """Run `write` on a temp file next to `path`, then move it into place; no partial file survives."""
    if path.exists() and not overwrite:
        raise _exists_error(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so the final rename is atomic; the real suffix last, so ffmpeg picks the format.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # reserve the name
        write(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_clobber(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _link_no_clobber(tmp: Path, path: Path) -> None:
    """Move `tmp` to `path` unless `path` exists; a hard link fails atomically if it does."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError:
        # Hard links unsupported on this filesystem: fall back to a check, racy only in theory.
        if path.exists():
            raise _exists_error(path) from None
        os.replace(tmp, path)


def _exists_error(path: Path) -> OutputExistsError:
    return OutputExistsError(
        f"output exists: {path}; pass --overwrite to replace it or choose another --output_path"
    )


def _check_suffix(path: Path, suffix: str) -> None:
    if path.suffix.lower() != suffix:
        raise InputError(f"output path {path} must end in {suffix}")


def _check_frames(frames: np.ndarray, ranks: tuple[int, ...], name: str) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError(f"{name} must be a uint8 numpy array, got {getattr(frames, 'dtype', type(frames))}")
    if frames.ndim not in ranks or frames.shape[-1] != 3 or 0 in frames.shape:
        shapes = " or ".join("(T, H, W, 3)" if r == 4 else "(H, W, 3)" for r in ranks)
        raise ValueError(f"{name} must have shape {shapes} with RGB channels, got {frames.shape}")
