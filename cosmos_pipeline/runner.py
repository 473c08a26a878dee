"""The two halves of running a request that every caller shares: generate (one window or a chained
long video) and write (the output and its sidecar, atomically). The Prefect tasks call these."""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosmos_pipeline.acceleration.options import Acceleration
from cosmos_pipeline.media import write_image, write_video
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.sidecar import write_sidecar

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


def write_output(result: "GenerationResult") -> Path:
    request = result.request
    assert request.output_path is not None
    if request.num_frames == 1:
        return write_image(result.frames[0], request.output_path, overwrite=request.overwrite)
    return write_video(result.frames, request.output_path, fps=OUTPUT_FPS, overwrite=request.overwrite)


def write_outputs(result: "GenerationResult", record: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """The output, then its sidecar (`record` adds to it, e.g. the MLflow run id).

    If the sidecar cannot be written (a full disk), a new output goes too: no output without its record.
    """
    assert result.request.output_path is not None
    existed = result.request.output_path.exists()
    path = write_output(result)
    try:
        return path, write_sidecar(result, path, record)
    except BaseException:
        if not existed:
            path.unlink(missing_ok=True)
        raise
