"""Validate a batch before any GPU time: the core's check (`cosmos_pipeline.batch`), then GX advisories.

The check is the same one the command line runs; the task adds its report to the Prefect run (an
artifact) and logs it once. A rejected batch is not an exception here: the flow ends Failed with the
report as its message, and a FAILED MLflow run holds the report. The advisories suite
(`configs/expectations/requests.json`) runs over the valid batch in GX's helper process: values the
model accepts but that rarely give a good result, logged as warnings and recorded with each run.
"""

from concurrent.futures import Future
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from cosmos_pipeline.batch import BatchReport, check_batch
from cosmos_pipeline.bundle import Row
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.settings import Settings
from tasks.expectations import INDEX_COLUMN, failures, run_suite
from tasks.spool import RunWriter

REQUESTS_SUITE = "requests"


def request_table(requests: list[GenerationRequest]) -> pd.DataFrame:
    """One line per request: the values the advisories look at."""
    return pd.DataFrame(
        [
            {
                INDEX_COLUMN: index,
                "name": request.name,
                "prompt_length": len(request.prompt),
                "num_frames": request.num_frames,
                "pixels": request.height * request.width,
                "guidance_scale": request.guidance_scale,
                "num_inference_steps": request.num_inference_steps,
            }
            for index, request in enumerate(requests, start=1)
        ]
    )


@task(name="validate-batch", cache_policy=NONE, persist_result=False)
def validate_batch(rows: list[Row], settings: Settings, skip_existing: bool = False) -> BatchReport:
    """Every problem of every row; the report is a Prefect artifact either way."""
    report = check_batch(rows, settings.policy, skip_existing)
    create_markdown_artifact(
        key="request-validation", markdown=report.markdown(), description=report.summary().splitlines()[0]
    )
    logger = get_run_logger()
    if report.ok:
        logger.info("%s", report.summary())
    else:
        logger.error("batch rejected, nothing generated: %s", report.summary())
    return report


def advise(requests: list[GenerationRequest]) -> "Future[dict[str, Any]]":
    """The advisories suite over `requests`, started in GX's helper process (see `record_advisories`)."""
    return run_suite(request_table(requests), REQUESTS_SUITE)


@task(name="record-advisories", cache_policy=NONE, persist_result=False)
def record_advisories(
    settings: Settings,
    advice: "Future[dict[str, Any]]",
    requests: list[GenerationRequest],
    run_ids: list[str | None],
) -> list[str]:
    """The advisories' verdict on `requests`, once GX has it: a warning per advisory a request misses, and
    the GX result on each request's run (`run_ids`, aligned; `validation/advisories.json`)."""
    logger = get_run_logger()
    try:
        result = advice.result()
    except Exception as error:  # a record, not a gate: its failure must not fail the batch
        logger.warning("request advisories not checked: %s: %s", type(error).__name__, error)
        return []
    warnings = []
    for failure in failures(result):
        for index in failure.rows:
            if index <= len(requests):
                warnings.append(f"{requests[index - 1].label}: `{failure.field}`: {failure.message}")
    for warning in warnings:
        logger.warning("advisory: %s", warning)
    for run_id in filter(None, run_ids):
        RunWriter(settings, run_id).log_dict(result, "validation/advisories.json")
    return warnings
