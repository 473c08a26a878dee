"""Validate a batch before any GPU time: the core's check (`cosmos_pipeline.batch`), then GX advisories.

The check is the same one the command line runs; the task adds its report to the Prefect run (an
artifact) and logs it once. A rejected batch is not an exception here: the flow ends Failed with the
report as its message, and a FAILED MLflow run holds the report. The advisories suite
(`configs/expectations/requests.json`) runs over the valid batch in GX's shared process while the
batch generates: values the model accepts but that rarely give a good result, logged as warnings and
kept as a Prefect artifact.
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
        if report.reused:
            logger.info("%d request(s) already have their output; reusing it", len(report.reused))
    else:
        logger.error("batch rejected, nothing generated: %s", report.summary())
    return report


def advise(requests: list[GenerationRequest]) -> "Future[dict[str, Any]]":
    """The advisories suite over `requests`, started in GX's shared process (see `record_advisories`)."""
    return run_suite(request_table(requests), REQUESTS_SUITE)


@task(name="record-advisories", cache_policy=NONE, persist_result=False)
def record_advisories(advice: "Future[dict[str, Any]]", requests: list[GenerationRequest]) -> list[str]:
    """The advisories' verdict on `requests`, once GX has it: a warning per advisory a request misses, and
    the whole result as a Prefect artifact of the flow run (`request-advisories`)."""
    logger = get_run_logger()
    try:
        result = advice.result()
    except Exception as error:  # a record, not a gate: its failure must not fail the batch
        logger.warning("request advisories not checked: %s: %s", type(error).__name__, error)
        return []
    warnings = [
        f"{requests[index - 1].label}: `{failure.field}`: {failure.message}"
        for failure in failures(result)
        for index in failure.rows
    ]
    for warning in warnings:
        logger.warning("advisory: %s", warning)
    lines = ["# Request advisories", "", *(f"- {warning}" for warning in warnings or ["none missed"])]
    create_markdown_artifact(key="request-advisories", markdown="\n".join(lines) + "\n")
    return warnings
