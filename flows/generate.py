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
from flows.common import generate_tracked, validated
from tasks.resolve import resolve_rows, resolve_settings


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
    skip_existing: bool = False,
    keep_going: bool = False,
) -> list[dict[str, Any]]:
    """Validate the whole batch, then generate each request; returns one record per generation.

    `skip_existing` skips requests whose output exists for the same request key; `keep_going`
    finishes the batch past a failed request and fails the flow at the end.
    """
    logger = get_run_logger()
    config = resolve_settings(profile, settings)
    context = {
        "input_path": input_path,
        "overrides": overrides,
        "profile": profile,
        "settings": settings,
        "skip_existing": skip_existing,
        "keep_going": keep_going,
    }

    def rows():
        found = resolve_rows({**(overrides or {}), "input_path": input_path or None}, config)
        if not skip_existing:
            return found
        kept = [row for row in found if row.request is None or not already_done(row.request)]
        if len(kept) < len(found):
            logger.info("skipping %d request(s) whose output exists", len(found) - len(kept))
        return kept

    requests, report = validated(config, rows, context)
    records, failures = [], []
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
