"""The steps both flows share: validate a batch (tracking a rejection) and run one tracked request."""

from collections.abc import Callable
from typing import Any

from prefect import get_run_logger

from cosmos_pipeline.bundle import Problem, Row
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.settings import Settings
from tasks.generate import generate_video
from tasks.postprocess import postprocess_output
from tasks.track import (
    fail_run,
    log_generation,
    prefect_tags,
    record_validation_failure,
    request_params,
    run_tags,
    start_run,
)
from tasks.validate import ValidationReport, validate_requests


def validated(
    settings: Settings,
    rows: Callable[[], list[Row]],
    context: dict[str, Any],
    experiment: str | None = None,
) -> tuple[list[GenerationRequest], ValidationReport]:
    """The batch's requests; a rejected batch fails the flow and leaves a FAILED MLflow run (the report)."""
    try:
        return validate_requests(rows(), settings.policy)
    except InputError as error:
        report = getattr(error, "report", None) or ValidationReport(
            rows=0, problems=[Problem(0, None, "input_path", str(error))]
        )
        run_id = record_validation_failure(settings, report, error, context, experiment)
        get_run_logger().error("batch rejected; the report is in MLflow run %s", run_id)
        raise


def generate_tracked(
    request: GenerationRequest,
    settings: Settings,
    validation: ValidationReport,
    context: dict[str, Any],
    variant: str | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """generate -> postprocess -> track inside one MLflow run; on failure the run is FAILED with the error.

    No output is left by a failed generation: outputs are written only after it succeeds, atomically.
    """
    run_id = start_run(
        settings,
        run_name=request.name or "generation",
        tags=run_tags(request, variant),
        params=request_params(request),
        experiment=experiment,
        parent_run_id=parent_run_id,
    )
    try:
        generate = generate_video.with_options(
            retries=settings.retries, retry_delay_seconds=settings.retry_delay_s
        )
        generation = generate(request, settings)
        record = {"mlflow_run_id": run_id, "mlflow_tracking_uri": settings.tracking_uri, **prefect_tags()}
        post = postprocess_output(generation, record)
        log_generation(settings, run_id, generation, post, validation, context)
    except Exception as error:
        fail_run(settings, run_id, error)
        raise
    return {
        "name": request.name,
        "run_id": run_id,
        "output_path": str(post.output_path),
        "seed": generation.result.seed,
        "gate_passed": post.gate_passed,
    }
