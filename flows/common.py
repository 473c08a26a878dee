"""The steps both flows share: start (settings, spool sync, log scrubbing), validate a batch (tracking a
rejection), and run one tracked request, here or on a warm worker."""

import contextlib
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger
from prefect.runtime import deployment

from cosmos_pipeline.bundle import Problem, Row
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.settings import Settings
from cosmos_pipeline.sidecar import read_sidecar
from tasks.resolve import resolve_settings
from tasks.run import Job, run_generation
from tasks.scrub import install_log_scrubber, scrub
from tasks.spool import sync_spool
from tasks.track import end_run, fail_run, open_run, prefect_tags, record_validation_failure
from tasks.validate import ValidationReport, validate_requests
from tasks.warm import generate_on_warm_worker


def start(profile: str | None, settings: dict[str, Any] | None) -> Settings:
    """A flow run's settings (parameters of a deployment run are untrusted), with runs spooled while the
    tracking server was away uploaded first, and secrets kept out of the run's logs."""
    install_log_scrubber()
    config = resolve_settings(profile, settings, untrusted=deployment.id is not None)
    logger = get_run_logger()
    try:
        report = sync_spool(config)
    except Exception as error:  # a sync problem must not stop new work; `cosmos-sync` reports it fully
        logger.warning("tracking spool not synced: %s: %s", type(error).__name__, scrub(str(error)))
        return config
    if report.uploaded or report.failed:
        logger.info("tracking spool: %s", report.summary())
    return config


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


def existing_record(request: GenerationRequest) -> dict[str, Any]:
    """The record of a request whose output already exists for the same request key (nothing is redone)."""
    assert request.output_path is not None
    sidecar = read_sidecar(request.output_path) or {}
    return {
        "name": request.name,
        "run_id": sidecar.get("mlflow_run_id"),
        "output_path": str(request.output_path),
        "seed": sidecar.get("seed"),
        "gate_passed": None,
        "reused": True,
    }


def generate_tracked(
    request: GenerationRequest,
    settings: Settings,
    validation: ValidationReport,
    context: dict[str, Any],
    variant: str | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """open run -> generate -> postprocess -> track; on failure the run is FAILED with the error.

    The run is a new one, or an interrupted run of the same request taken over (no second run for a
    retry). No output is left by a failed generation: outputs are written only after it succeeds,
    atomically. A stopped process (a killed worker) marks its run KILLED on the way out.
    """
    run_id, request = open_run(settings, request, variant, experiment, parent_run_id)
    sidecar = {"mlflow_run_id": run_id, "mlflow_tracking_uri": scrub(settings.tracking_uri), **prefect_tags()}
    generate = generate_on_warm_worker if settings.warm_workers else run_generation
    try:
        return {**generate(Job(request, settings, validation, context, sidecar)), "reused": False}
    except Exception as error:
        fail_run(settings, run_id, error)
        raise
    except BaseException as error:  # SystemExit / KeyboardInterrupt: no Prefect task now, just the record
        with contextlib.suppress(Exception):
            end_run(settings, run_id, error)
        raise
