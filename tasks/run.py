"""One tracked generation in this process: generate -> postprocess -> track, into an open MLflow run.

The flows call it directly, and a warm worker (`tasks.warm`) calls it for them; either way only the
small record it returns leaves the process (frames never do).
"""

from typing import Any

from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.settings import Settings
from tasks.generate import generate_video
from tasks.postprocess import postprocess_output
from tasks.track import log_generation, worker_name
from tasks.validate import ValidationReport


def run_generation(
    request: GenerationRequest,
    settings: Settings,
    validation: ValidationReport,
    context: dict[str, Any],
    sidecar: dict[str, Any],
) -> dict[str, Any]:
    """Generate `request` and track it in the MLflow run `sidecar["mlflow_run_id"]`; returns its record.

    `sidecar` is what the flow adds to the output's sidecar (the run id, the Prefect flow run).
    """
    run_id = sidecar["mlflow_run_id"]
    generate = generate_video.with_options(
        retries=settings.retries, retry_delay_seconds=settings.retry_delay_s
    )
    generation = generate(request, settings)
    post = postprocess_output(generation, sidecar)
    log_generation(settings, run_id, generation, post, validation, context)
    return {
        "name": request.name,
        "run_id": run_id,
        "output_path": str(post.output_path),
        "seed": generation.result.seed,
        "gate_passed": post.gate_passed,
        "pipeline_loaded": generation.load_s is not None,
        "worker": worker_name(),
    }
