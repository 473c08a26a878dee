"""What a request may touch and how big it may be: the guard for untrusted bundles and parameters.

A deployment or a shared worker takes requests from people it should not trust with its file
system or its GPU. The policy confines media reads to input roots and outputs to an output root
(local folders after resolving `..` and symlinks; URI prefixes such as `s3://bucket/inputs/`, whose
URIs were checked when parsed: `cosmos_pipeline.storage`), and bounds prompt length, media size in
bytes and pixels, frame counts and resolution, before anything is decoded in full or loaded. Locally
the CLI runs with no roots (the user's own files) but the same size limits.
"""

from pathlib import Path

from PIL import Image
from pydantic import BaseModel, ConfigDict

from cosmos_pipeline.errors import InputError
from cosmos_pipeline.media import image_size, media_kind, video_size
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.storage import URI, Location, is_file, size


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True)

    input_roots: tuple[Location, ...] | None = None  # folders or URI prefixes; None: read anywhere
    output_root: Location | None = None  # a folder or a URI prefix; None: write anywhere
    max_prompt_chars: int = 20_000  # the text encoder reads 512 tokens; more is a mistake or abuse
    max_media_bytes: int = 1 << 30
    # Per input frame, checked from the header before decoding: 64 MP admits every common camera's photos
    # (61 MP full frame); decoded as RGB it is 192 MiB. Pillow refuses images over ~179 MP whatever this says.
    max_media_pixels: int = 8192 * 8192
    max_num_frames: int = 1_001  # long videos chain windows; this bounds GPU time per request
    max_output_pixels: int = 1280 * 1280  # height x width; the model is trained at 704x1280


def _limit(policy: Policy, field: str, unit: str) -> str:
    """The limit `field` and where to raise it, for a refusal's message."""
    return (
        f"the limit is {getattr(policy, field)} {unit} (policy `{field}`; to raise it set "
        f"COSMOS_POLICY__{field.upper()} or `{field}` under `[policy]` in the settings profile)"
    )


def _inside(path: Path | URI, root: Path | URI) -> bool:
    if isinstance(path, URI) or isinstance(root, URI):  # a URI is under a URI prefix, never a folder
        return isinstance(path, URI) and isinstance(root, URI) and path.is_under(root)
    return path.resolve().is_relative_to(root.resolve())


def check_readable(path: Path | URI, policy: Policy, what: str) -> None:
    """A file the request reads (bundle, prompt file, media, adapter, model folder) is under an input root."""
    if policy.input_roots is not None and not any(_inside(path, root) for root in policy.input_roots):
        roots = ", ".join(str(root) for root in policy.input_roots)
        raise InputError(f"{what} {path} is outside the allowed input folders ({roots})")


def check_paths(request: GenerationRequest, policy: Policy) -> None:
    """Media under an input root, output under the output root; `..` and symlinks resolved first."""
    for what, path in (("input", request.input_path), ("adapter", request.lora_path)):
        if path is not None:
            check_readable(path, policy, what)
    if Path(request.model_id).expanduser().is_dir():  # a local checkpoint: `from_pretrained` reads it
        check_readable(Path(request.model_id).expanduser(), policy, "model folder")
    output = request.output_path
    if policy.output_root is not None and output is not None and not _inside(output, policy.output_root):
        raise InputError(f"output {output} is outside the output folder {policy.output_root}")


def check_sizes(request: GenerationRequest, policy: Policy) -> None:
    """Bounds that need no decoding: prompt length, frames, output size."""
    for name, text in (("prompt", request.prompt), ("negative prompt", request.negative_prompt or "")):
        if len(text) > policy.max_prompt_chars:
            limit = _limit(policy, "max_prompt_chars", "characters")
            raise InputError(f"the {name} has {len(text)} characters; {limit}")
    if request.num_frames > policy.max_num_frames:
        raise InputError(
            f"{request.num_frames} frames requested; {_limit(policy, 'max_num_frames', 'frames')}"
        )
    if request.height * request.width > policy.max_output_pixels:
        raise InputError(
            f"a {request.height}x{request.width} output (height x width) is "
            f"{request.height * request.width} pixels; {_limit(policy, 'max_output_pixels', 'pixels')}"
        )


def check_media_size(path: Path | URI, policy: Policy) -> None:
    """File bytes (a URI's before it is fetched) and frame pixels from the header only, so a decompression
    bomb is never decoded."""
    length = size(path)
    if length > policy.max_media_bytes:
        raise InputError(f"input {path} is {length} bytes; {_limit(policy, 'max_media_bytes', 'bytes')}")
    try:
        width, height = image_size(path) if media_kind(path) == "image" else video_size(path)
    except Image.DecompressionBombError:
        raise InputError(
            f"input {path} has over {2 * Image.MAX_IMAGE_PIXELS} pixels, more than Pillow reads; "
            f"{_limit(policy, 'max_media_pixels', 'pixels a frame')}"
        ) from None
    if width * height > policy.max_media_pixels:
        raise InputError(
            f"input {path} is {width}x{height} (width x height), {width * height} pixels; "
            f"{_limit(policy, 'max_media_pixels', 'pixels a frame')}"
        )


def enforce(request: GenerationRequest, policy: Policy) -> None:
    check_paths(request, policy)
    check_sizes(request, policy)
    if request.input_path is not None and is_file(request.input_path):
        check_media_size(request.input_path, policy)
