"""The `generate` flow: one request or a batch, each generation a tracked MLflow run.

The command line (`flows.cli`) runs this flow; so does the `generate` deployment (prefect.yaml).
Parameters mirror the command line: `input_path` (a bundle, a folder of bundles or a media file) and
`overrides` (flag values, seed or request spelling, over the bundle's), plus the settings profile and
explicit settings. Parameters of a deployment run are untrusted (`tasks.resolve`). Nothing here parses
a command line, and nothing here imports the model: generation happens in `tasks.run`, here or on a warm
worker.
"""

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed, State

from tasks.dispatch import generate_tracked
from tasks.resolve import resolve_requests, resolve_settings
from tasks.spool import sync_tracking_spool
from tasks.track import GenerationRecord, open_run, record_rejected_batch, reused_record
from tasks.validate import advise, record_advisories, validate_batch


class GenerationFailures(RuntimeError):
    """Several requests of a batch failed (with `keep_going`); each has a FAILED MLflow run."""


def run_name() -> str:
    parameters = flow_run.parameters
    source = parameters.get("input_path") or (parameters.get("overrides") or {}).get("name") or "prompt"
    return f"generate-{Path(str(source)).stem}"


@flow(name="generate", flow_run_name=run_name)
def generate(
    input_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    profile: str | None = None,
    settings: dict[str, Any] | None = None,
    skip_existing: bool = True,
    keep_going: bool = False,
) -> list[GenerationRecord] | State:
    """Validate the whole batch, then generate each request; returns one record per request.

    Idempotent: with `skip_existing` (the default), a request whose output already exists for the same
    request key is not generated again and its existing record is returned (`reused`), so a retried or
    re-triggered run makes no second output and no second MLflow run; `overwrite` in `overrides` asks for
    a new one. `keep_going` finishes the batch past a failed request and fails the flow at the end.
    """
    config = resolve_settings(profile, settings)
    sync_tracking_spool(config)
    rows = resolve_requests(input_path, overrides, config)
    batch = validate_batch(rows, config, skip_existing)
    if not batch.ok:
        record_rejected_batch(config, batch, input_path or "command line")
        return Failed(message=batch.summary())
    advice = advise(batch.requests)  # GX advisories, in their own process while the model works
    records = [reused_record(request) for request in batch.reused]
    failures = []
    for request in batch.requests:
        job = open_run(request, config, batch)
        try:
            records.append(generate_tracked(job))
        except Exception as error:
            if not keep_going:
                raise
            failures.append(f"{request.label}: {type(error).__name__}: {error}")
    record_advisories(advice, batch.requests)
    if failures:
        summary = f"{len(failures)} of {len(batch.requests)} request(s) failed: " + "; ".join(failures)
        get_run_logger().error("%s", summary)
        raise GenerationFailures(summary)
    return records
