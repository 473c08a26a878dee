"""One tracked generation in this process: generate -> postprocess -> track, into an open MLflow run.

The flows call it directly, and a warm worker (`tasks.warm`) calls it for them; either way only the
small record it returns leaves the process (frames never do).
"""

from dataclasses import dataclass
from typing import Any

from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.settings import Settings
from tasks.generate import generate_video
from tasks.postprocess import postprocess_output
from tasks.track import log_generation, worker_name
from tasks.validate import ValidationReport


@dataclass(frozen=True)
class Job:
    """A validated request with its open MLflow run: what a flow hands over to be generated.

    `sidecar` is what the flow adds to the output's sidecar (the run id, the Prefect flow run).
    """

    request: GenerationRequest
    settings: Settings
    validation: ValidationReport
    context: dict[str, Any]
    sidecar: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.sidecar["mlflow_run_id"]


def run_generation(job: Job) -> dict[str, Any]:
    """Generate `job.request` and track it in the job's MLflow run; returns its record."""
    settings = job.settings
    generate = generate_video.with_options(
        retries=settings.retries, retry_delay_seconds=settings.retry_delay_s
    )
    generation = generate(job.request, settings)
    post = postprocess_output(generation, job.sidecar)
    log_generation(settings, job.run_id, generation, post, job.validation, job.context)
    return {
        "name": job.request.name,
        "run_id": job.run_id,
        "output_path": str(post.output_path),
        "seed": generation.result.seed,
        "gate_passed": post.gate_passed,
        "pipeline_loaded": generation.load_s is not None,
        "worker": worker_name(),
    }
