"""The two halves of running a request that every caller shares: generate (one window or a chained
long video) and write (the output and its sidecar, atomically). The Prefect tasks call these."""

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosmos_pipeline.acceleration.options import Acceleration
from cosmos_pipeline.media import OutputExistsError, write_image, write_video
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.sidecar import sidecar_path, write_sidecar
from cosmos_pipeline.storage import URI, exists, publish, remove

if TYPE_CHECKING:  # torch loads where a model runs, not where outputs are only written
    from cosmos_pipeline.generate import GenerationResult, StepCallback

OUTPUT_FPS = 16  # Cosmos-Predict2.5 is trained on 16 fps video


def generate_request(
    pipe,
    request: GenerationRequest,
    on_step: "StepCallback | None" = None,
    options: Acceleration | None = None,
) -> "GenerationResult":
    """One window, or chained windows when the request is longer than the model's window.
    `options`: acceleration for this call (None: the plan the pipeline was loaded with)."""
    from cosmos_pipeline.generate import generate
    from cosmos_pipeline.long_video import generate_long

    if request.is_long:
        return generate_long(pipe, request, on_step, options)
    return generate(pipe, request, on_step, options=options)


def write_output(result: "GenerationResult", path: Path, overwrite: bool) -> Path:
    if result.request.num_frames == 1:
        return write_image(result.frames[0], path, overwrite=overwrite)
    return write_video(result.frames, path, fps=OUTPUT_FPS, overwrite=overwrite)


def write_outputs(
    result: "GenerationResult", record: dict[str, Any] | None = None, staging: Path | None = None
) -> tuple[Path | URI, Path | URI]:
    """The output, then its sidecar (`record` adds to it, e.g. the MLflow run id).

    If the sidecar cannot be written (a full disk), a new output goes too: no output without its record.
    An output URI is written in `staging` (a local folder; a temporary one if None), then uploaded with
    its sidecar; the local copies stay in `staging` for the caller (tracking logs them).
    """
    request = result.request
    assert request.output_path is not None
    if isinstance(request.output_path, URI):
        if staging is not None:
            return _upload_outputs(result, record, staging)
        with tempfile.TemporaryDirectory(prefix="cosmos-output-") as folder:
            return _upload_outputs(result, record, Path(folder))
    existed = request.output_path.exists()
    path = write_output(result, request.output_path, request.overwrite)
    try:
        return path, write_sidecar(result, path, record)
    except BaseException:
        if not existed:
            path.unlink(missing_ok=True)
        raise


def _upload_outputs(
    result: "GenerationResult", record: dict[str, Any] | None, staging: Path
) -> tuple[URI, URI]:
    """Both files written in `staging`, then uploaded, output first: an object appears whole, an existing
    output is kept unless the request overwrites, and an output whose sidecar did not arrive is removed."""
    request = result.request
    target = request.output_path
    assert isinstance(target, URI)
    existed = request.overwrite and exists(target)
    path = write_output(result, staging / target.name, overwrite=False)
    sidecar = write_sidecar(result, path, record)  # the record names the URI, as the request does
    try:
        publish(path, target, request.overwrite)
    except FileExistsError:
        raise OutputExistsError(
            f"output exists: {target}; pass --overwrite to replace it or choose another --output_path"
        ) from None
    try:
        publish(sidecar, sidecar_path(target), overwrite=True)
    except BaseException:
        if not existed:
            remove(target)
        raise
    return target, sidecar_path(target)
