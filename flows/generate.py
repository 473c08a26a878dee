"""The `generate` flow: one request or a batch, each generation a tracked MLflow run.

The CLI (`flows.cli`) runs this flow; so does the `generate` deployment (prefect.yaml). Parameters
mirror the command line: `input_path` (a bundle, a folder of bundles or a media file) and
`overrides` (flag values, seed or request spelling, over the bundle's), plus the settings profile
and explicit settings. Nothing here parses a command line.
"""

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from cosmos_pipeline.bundle import already_done
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.policy import check_paths
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.settings import Settings
from flows.common import existing_record, generate_tracked, start, validated
from tasks.resolve import resolve_rows


class GenerationFailures(RuntimeError):
    """Several requests of a batch failed (with `keep_going`); each has a FAILED MLflow run."""


def run_name() -> str:
    parameters = flow_run.parameters
    source = parameters.get("input_path") or (parameters.get("overrides") or {}).get("name") or "prompt"
    return f"generate-{Path(str(source)).stem}"


def reusable(request: GenerationRequest, settings: Settings) -> bool:
    """The output exists for the same request key, and the request may touch it (checked first: the key
    reads the input, the check reads the output's sidecar), and no new one was asked for."""
    try:
        check_paths(request, settings.policy)
    except InputError:
        return False  # validation reports it
    return not request.overwrite and already_done(request)


@flow(name="generate", flow_run_name=run_name)
def generate(
    input_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    profile: str | None = None,
    settings: dict[str, Any] | None = None,
    skip_existing: bool = True,
    keep_going: bool = False,
) -> list[dict[str, Any]]:
    """Validate the whole batch, then generate each request; returns one record per request.

    Idempotent: with `skip_existing` (the default), a request whose output already exists for the same
    request key is not generated again and its existing record is returned (`reused`), so a retried
    or re-triggered run makes no second output and no second MLflow run; `overwrite` in `overrides`
    asks for a new one. `keep_going` finishes the batch past a failed request and fails the flow at
    the end. Parameters of a deployment run are untrusted (`tasks.resolve`).
    """
    logger = get_run_logger()
    config = start(profile, settings)
    context = {
        "input_path": input_path,
        "overrides": overrides,
        "profile": profile,
        "settings": settings,
        "skip_existing": skip_existing,
        "keep_going": keep_going,
    }
    done: list[dict[str, Any]] = []

    def rows():
        found = resolve_rows({**(overrides or {}), "input_path": input_path or None}, config)
        if not skip_existing:
            return found
        kept = []
        for row in found:
            if row.request is not None and reusable(row.request, config):
                done.append(existing_record(row.request))
            else:
                kept.append(row)
        if done:
            logger.info("%d request(s) already have their output; reusing it", len(done))
        return kept

    requests, report = validated(config, rows, context)
    records, failures = list(done), []
    for request in requests:
        try:
            records.append(generate_tracked(request, config, report, context))
        except Exception as error:
            if not keep_going:
                raise
            failures.append(f"{request.name}: {type(error).__name__}: {error}")
    if failures:
        raise GenerationFailures(
            f"{len(failures)} of {len(requests)} request(s) failed: " + "; ".join(failures)
        )
    return records
