"""Media IO: check, read, fit and write images and videos.

Inputs are checked here before any model loads, so a bad file costs milliseconds, not a model load.
An input is decoded completely before any of it is used: a truncated or corrupt file is refused with
the decoder's reason, never read up to the damage. Images of any mode become 8-bit sRGB (scaled, not
clipped; transparency composited on white).

Outputs are written atomically (temp file in the same directory, then rename) and never replace an
existing file unless asked, so an interrupted or concurrent run cannot leave a half-written or
clobbered result behind.

Videos are decoded and encoded with the ffmpeg binary that `imageio-ffmpeg` ships, so no system
ffmpeg is needed. An input named by URI is read from this host's cache (`cosmos_pipeline.storage`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import re
import secrets
import subprocess
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import imageio.v2 as imageio
import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageOps

from .errors import InputError
from .storage import URI, Location, exists, local

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".webm", ".mkv", ".gif"})

MediaKind = Literal["image", "video"]
FitMode = Literal["crop", "stretch"]

# Visually near-lossless H.264; the generated videos are small, so size is not a concern.
VIDEO_CRF = 18
# One transformer token covers 16x16 pixels (8x VAE, 2x2 patches): a smaller input holds less than a token.
MIN_INPUT_SIDE = 16
# Fitting an input up by more than this gives a visibly blurry conditioning frame: warn.
MAX_UPSCALE = 4.0
# Transparent pixels are composited on white, as image viewers show them.
TRANSPARENT_BACKGROUND = (255, 255, 255)

# Modes whose samples exceed 8 bits: scaled to 0-255 from these ranges (Pillow would clip them).
_HIGH_DEPTH_PEAKS = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
_SRGB = ImageCms.createProfile("sRGB")
_FFMPEG_PROBLEM = re.compile(r"invalid|error|not found|corrupt|unsupported|unknown", re.IGNORECASE)
# What ffmpeg's terse reports of an incomplete file mean.
_FFMPEG_EXPLAINED = {
    "partial file": "the file is truncated",
    "moov atom not found": "the MP4's index (moov atom) is missing: the file was cut short or is not an MP4",
}


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


def check_media(path: Location, size: tuple[int, int] | None = None) -> MediaKind:
    """Pre-flight check of an input file: it exists, is readable, has a supported suffix and decodes
    completely, so a truncated or corrupt file is refused with the decoder's reason.

    An input smaller than MIN_INPUT_SIDE on a side is refused; with `size` (the output's height,
    width), fitting it up by more than MAX_UPSCALE is logged as a warning. A JPEG is decoded at 1/8
    scale (every byte is still read), a video to nothing: the check costs a fraction of a full read.
    """
    path = local(path)
    _check_readable_file(path)
    kind = media_kind(path)
    if kind == "image":
        _, (width, height) = _open_image(path, size=(1, 1))
    else:
        width, height = video_size(path)
        _decoded_frame_count(path)
    if min(width, height) < MIN_INPUT_SIDE:
        raise InputError(
            f"input media {path} is {width}x{height} pixels (width x height); at least {MIN_INPUT_SIDE} "
            "a side are needed to condition on; use a larger image or video"
        )
    if size is not None and (scale := max(size[0] / height, size[1] / width)) > MAX_UPSCALE:
        logger.warning(
            "input media %s is %dx%d pixels (width x height): fitting it to the %dx%d output upscales it "
            "%.1fx, so the conditioning will be blurry; a larger input gives a sharper start",
            path, width, height, size[1], size[0], scale,
        )  # fmt: skip
    return kind


def read_image(path: Location, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 sRGB, upright (EXIF orientation applied).

    Every mode is converted, never clipped: 16-bit and 32-bit samples are scaled to 8 bits, palettes
    expanded, an embedded colour profile (CMYK needs one to look right) converted to sRGB, and
    transparent pixels composited on TRANSPARENT_BACKGROUND. With `size` (height, width), the size the
    image will be fitted to, a JPEG at least twice that size is decoded at 1/2, 1/4 or 1/8 scale (DCT
    scaling, never below `size`): a 50-megapixel photo then takes a fraction of the time and memory.
    """
    path = local(path)
    _check_readable_file(path)
    image, _ = _open_image(path, size)
    return np.asarray(image, dtype=np.uint8)


def image_size(path: Location) -> tuple[int, int]:
    """(width, height) from the image's header only, so a decompression bomb is measured, never decoded.

    Pillow itself refuses images over 2 x `Image.MAX_IMAGE_PIXELS` (`Image.DecompressionBombError`).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the caller's limit decides
            with Image.open(local(path)) as image:
                return image.size
    except Image.DecompressionBombError:
        raise
    except Exception as error:  # Pillow raises many types on malformed headers
        raise InputError(f"input media corrupt or not an image: {path}: {_reason(error)}") from None


def video_size(path: Location) -> tuple[int, int]:
    """(width, height) of the frames of the first video stream, from ffmpeg's reading of the header."""
    reader = _video_reader(local(path))
    try:
        return _video_meta(reader, path)
    finally:
        reader.close()  # stops ffmpeg before it decodes


def read_video(path: Location, max_frames: int | None = None, last: bool = False) -> np.ndarray:
    """Read a video as (T, H, W, 3) uint8 RGB; a truncated or corrupt video is refused.

    With `max_frames`, keep the first `max_frames` frames, or the last ones when `last=True`
    (Video2World conditions on the end of the input video). Only those frames are held in memory.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    path = local(path)
    _check_readable_file(path)
    _decoded_frame_count(path)  # ffmpeg stops at a broken frame without failing: check the whole file first
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


def content_hash(path: Location) -> str:
    """SHA-256 hex digest of the file's bytes, recorded with a run to identify its inputs."""
    with open(local(path), "rb") as f:
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


def _reason(error: Exception) -> str:
    return str(error) or type(error).__name__


# ----------------------------------------------------------------------------- images


def _open_image(path: Path, size: tuple[int, int] | None) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded image as upright 8-bit sRGB, and its full upright (width, height) (larger than the
    image when a JPEG was decoded at reduced scale for `size`, a (height, width)).

    Pillow gets the open file, not its name: given a name it maps raw TIFF data into memory at the size
    it reports after EXIF orientation, which scrambles a TIFF that orientation turns (Pillow 13).
    """
    try:
        with open(path, "rb") as file:
            header = file.read(25)  # a PNG's signature and IHDR, up to its bit depth
            file.seek(0)
            with Image.open(file) as image:
                header_size = image.size
                if size is not None:  # a no-op but for JPEG, whose pixels are stored unturned
                    turned = image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)
                    image.draft(image.mode, (size[0], size[1]) if turned else (size[1], size[0]))
                image.load()
                decoded_size = image.size
                ImageOps.exif_transpose(image, in_place=True)  # Pillow turns a TIFF while loading it
                _png_key_in_pixel_scale(image, header)
    except Exception as error:  # Pillow raises many types on malformed files (SyntaxError, struct.error...)
        raise InputError(f"input media corrupt or not an image: {path}: {_reason(error)}") from None
    full_size = header_size[::-1] if image.size != decoded_size else header_size
    return _to_rgb(image, path), full_size


def _png_key_in_pixel_scale(image: Image.Image, header: bytes) -> None:
    """Pillow keeps a PNG's transparent key colour (tRNS) in the file's sample scale, while it scales
    1-, 2- and 4-bit grey pixels to 0-255 and cuts 16-bit RGB ones to their high byte: match them."""
    key = image.info.get("transparency")
    if image.format != "PNG" or key is None or image.mode not in ("1", "L", "RGB"):
        return
    bit_depth = header[24] if len(header) == 25 else 8  # IHDR, the first chunk, holds it in byte 24
    if image.mode in ("1", "L") and bit_depth < 8:
        image.info["transparency"] = key * 255 // (2**bit_depth - 1)
    elif image.mode == "RGB" and bit_depth == 16:
        image.info["transparency"] = tuple(value >> 8 for value in key)


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """8-bit sRGB of any mode; transparent pixels composited on TRANSPARENT_BACKGROUND."""
    alpha = _alpha(image)
    image.info.pop("transparency", None)  # now in `alpha`; Pillow warns when a palette drops it
    colour = _to_srgb(_eight_bit(image, path) if image.mode in _HIGH_DEPTH_PEAKS else image, path)
    if alpha is None or alpha.getextrema()[0] == 255:
        return colour
    logger.info("%s has transparent pixels: composited on white", path)
    return Image.composite(colour, Image.new("RGB", colour.size, TRANSPARENT_BACKGROUND), alpha)


def _alpha(image: Image.Image) -> Image.Image | None:
    """The image's opacity as an 'L' image: its alpha channel, or its transparent key colour."""
    if image.mode in _HIGH_DEPTH_PEAKS:
        key = image.info.get("transparency")
        if key is None:
            return None
        return Image.fromarray(np.where(np.asarray(image) == key, 0, 255).astype(np.uint8))
    return image.convert("RGBA").getchannel("A") if image.has_transparency_data else None


def _eight_bit(image: Image.Image, path: Path) -> Image.Image:
    """16- and 32-bit grey as 8-bit 'L', scaled from the sample range to 0-255 (Pillow would clip it).

    32-bit integers are read as 16-bit samples (the range Pillow gives 16-bit files), floats as 0-1;
    samples outside that range have no defined brightness, so the image is refused.
    """
    peak = _HIGH_DEPTH_PEAKS[image.mode]
    samples = np.asarray(image)
    low, high = (float(samples.min()), float(samples.max())) if samples.size else (0.0, 0.0)
    if not (0 <= low and high <= peak):  # NaN fails too
        kind = "floating-point" if image.mode == "F" else f"{'32' if image.mode == 'I' else '16'}-bit integer"
        raise InputError(
            f"input image {path} has {kind} samples from {low:g} to {high:g}, outside the 0-{peak:g} range "
            "that maps to black-white; save it as 8- or 16-bit"
        )
    out = Image.fromarray(np.rint(samples.astype(np.float32) * (255 / peak)).astype(np.uint8))
    if "icc_profile" in image.info:  # a grey profile still describes the scaled samples
        out.info["icc_profile"] = image.info["icc_profile"]
    return out


def _to_srgb(image: Image.Image, path: Path) -> Image.Image:
    """RGB through the image's colour profile when it has one, else Pillow's plain conversion."""
    if image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("L" if image.mode in ("1", "LA") else "RGB")  # palette, alpha, YCbCr, LAB...
    profile = image.info.get("icc_profile")
    if not profile:
        return image if image.mode == "RGB" else image.convert("RGB")
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        return ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError) as error:
        logger.warning("%s: its colour profile cannot be applied (%s); colours read as sRGB", path, error)
        return image.convert("RGB")


# ----------------------------------------------------------------------------- videos


def _ffmpeg_input(path: Path) -> str:
    """An absolute path: ffmpeg never takes it for an option (`-...`) or a protocol (`concat:...`)."""
    return str(Path(path).absolute())


def _decoded_frame_count(path: Path) -> int:
    stat = path.stat()
    return _decode_to_nothing(_ffmpeg_input(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _decode_to_nothing(path: str, size: int, mtime_ns: int) -> int:
    """Decode every frame of the first video stream, discard it, and count the frames.

    ffmpeg decodes past a truncated file or a broken frame and exits 0; `-xerror` stops it at the
    first corrupt frame, and anything it logs at error level refuses the file. Cached by the file's
    size and modification time, so a pre-flight check and the read that follows decode once.
    """
    import imageio_ffmpeg  # here, not at the top: the core imports without it where no video is read

    ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error"]
    decode = [*ffmpeg, "-xerror", "-i", path, "-map", "0:v:0", "-fps_mode", "passthrough",
              "-f", "null", "-progress", "pipe:1", "-"]  # fmt: skip
    result = subprocess.run(decode, capture_output=True, text=True, errors="replace", check=False)
    if result.returncode or result.stderr.strip():
        # `-xerror` stopped at the first broken frame, before the demuxer saw whether the file ends early.
        demux = [*ffmpeg, "-i", path, "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
        truncation = subprocess.run(demux, capture_output=True, text=True, errors="replace", check=False)
        raise _not_a_video(path, truncation.stderr + result.stderr)
    counts = re.findall(r"^frame=(\d+)", result.stdout, re.MULTILINE)
    if not counts or int(counts[-1]) == 0:
        raise _not_a_video(path, "no frames could be decoded")
    return int(counts[-1])


def _video_reader(path: Path) -> Iterator:
    import imageio_ffmpeg  # as above

    # Only the first video stream, one output frame per decoded frame (no duplication to a fixed rate).
    return imageio_ffmpeg.read_frames(
        _ffmpeg_input(path), pix_fmt="rgb24", output_params=["-map", "0:v:0", "-fps_mode", "passthrough"]
    )


def _video_meta(reader: Iterator, path: Path) -> tuple[int, int]:
    try:
        width, height = next(reader)["size"]
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        raise _not_a_video(path, str(err)) from None
    return width, height


def _iter_video_frames(path: Path) -> Iterator[np.ndarray]:
    """Yield decoded frames; raises InputError if the file does not decode or has no frames."""
    reader = _video_reader(path)
    try:
        width, height = _video_meta(reader, path)
        count = 0
        try:
            for buffer in reader:
                count += 1
                yield np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3)
        except (OSError, RuntimeError) as err:
            raise _not_a_video(path, str(err)) from None
        if count == 0:
            raise _not_a_video(path, "no frames could be decoded")
    finally:
        reader.close()


def _not_a_video(path: Path | str, log: str) -> InputError:
    return InputError(f"input media corrupt or not a video: {path}: {_decoder_message(log)}")


def _decoder_message(log: str) -> str:
    """The most telling line of ffmpeg's log, without `[... @ 0x..]`: an incomplete file if it saw one,
    else the first problem it reports."""
    noise = ("Conversion failed!", "frame=", "=== stderr ===", "Could not load meta", "configuration:")
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip() for line in log.splitlines()]
    lines = [line for line in lines if line and not line.startswith(noise)]
    for sign, meaning in _FFMPEG_EXPLAINED.items():
        for line in lines:
            if sign in line:
                return f"{meaning} ({line})"
    problems = [line for line in lines if _FFMPEG_PROBLEM.search(line)]
    if problems:
        return problems[0]
    return lines[-1] if lines else "ffmpeg could not read it"


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


def check_output_path(path: Location, num_frames: int, overwrite: bool) -> None:
    """Pre-flight check of an output path, before any model loads; creates nothing.

    One frame is written as PNG, more as MP4; the path must not exist unless `overwrite`, and the
    directory it goes in (or the nearest existing ancestor, since parents are created) must be
    writable. A URI's object must not exist unless `overwrite` (the upload is what tells whether the
    store lets this host write there).
    """
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
    if isinstance(path, URI):
        if not overwrite and exists(path):
            raise _exists_error(path)
        return
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


def _exists_error(path: Location) -> OutputExistsError:
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
