"""`cosmos-generate`: the command line, run as the `generate` Prefect flow with MLflow tracking.
`cosmos-evaluate`: an evaluation suite, run here as an `evaluate-variants` flow run.

Flags are parsed here only (`cosmos_pipeline.cli.parse_args`), and every request is resolved and
pre-flighted before Prefect or MLflow start: bad input exits 2 at once. Then the flow runs (on the
server at PREFECT_API_URL, or a temporary local one) and the command prints where the MLflow runs
are. Exit codes are the core CLI's (`cosmos_pipeline.cli`).
"""

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from cosmos_pipeline.cli import (
    EXIT_INPUT,
    EXIT_OK,
    acceleration_options,
    error_exit_code,
    parse_args,
    split_run_options,
)
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.settings import Settings, load_settings, resolve

# Before Prefect is imported: no telemetry attempts offline, and room for a slow temporary
# server start on a small machine. An explicit environment wins.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def print_runs(settings: Settings, flow_run_id: str) -> None:
    """Where this flow run's MLflow runs are, and how to open them (or where they wait to be synced)."""
    from tasks.scrub import scrub
    from tasks.spool import experiment_id, mlflow_client, server_reachable, spool_root
    from tasks.track import search_runs, ui_hint

    if not server_reachable(settings):
        print(
            f"\nMLflow: {scrub(settings.tracking_uri)} unreachable; this run's records wait in "
            f"{spool_root(settings)}: `cosmos-sync` uploads them (the next flow run does too)"
        )
        return
    experiment = experiment_id(mlflow_client(settings), settings.experiment, settings)
    runs = search_runs(
        settings.tracking_uri, settings.experiment, f"tags.`prefect.flow_run_id` = '{flow_run_id}'"
    )
    print(f"\nMLflow: experiment '{settings.experiment}' (id {experiment}) at {scrub(settings.tracking_uri)}")
    for run in runs.to_dict("records"):
        output = run.get("tags.output_path") or run.get("tags.error") or ""
        name = run.get("tags.mlflow.runName") or ""
        print(f"  run {run['run_id']}  {run['status']:<8}  {name}  {output}")
    print(f"Open the UI: {ui_hint(settings)}")
    for run_id in runs["run_id"] if "run_id" in runs else []:
        print(f"  then http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run_id}")


def prefect_defaults() -> None:
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)


def run(argv: Sequence[str] | None = None) -> int:
    values, skip_existing, keep_going = split_run_options(parse_args(argv))
    profile = values.pop("profile", None)  # else COSMOS_PROFILE
    acceleration = acceleration_options(values)  # None: the profile's (or the default mode)
    explicit = {} if acceleration is None else {"acceleration": acceleration.model_dump(mode="json")}
    try:
        settings = load_settings(profile, **explicit)
        plan = resolve(values, settings, skip_existing)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INPUT
    if not plan.requests:
        print(f"nothing to do: all {len(plan.skipped)} request(s) already have their output")
        return EXIT_OK

    prefect_defaults()
    from flows.generate import generate

    overrides: dict[str, Any] = {key: value for key, value in values.items() if value is not None}
    input_path = overrides.pop("input_path", None)
    state = generate(
        input_path=None if input_path is None else str(input_path),
        overrides=overrides,
        profile=profile,
        settings=explicit or None,
        skip_existing=skip_existing,
        keep_going=keep_going,
        return_state=True,
    )
    print_runs(settings, str(state.state_details.flow_run_id))
    if state.is_completed():
        return EXIT_OK
    error = state.result(raise_on_failure=False)
    print(f"error: {error}", file=sys.stderr)
    return error_exit_code(error) if isinstance(error, Exception) else 1


def main() -> None:
    sys.exit(run())


def profile_settings(profile: str | None) -> Settings | None:
    """The profile's settings, or None once the reason they cannot be loaded is printed."""
    try:
        return load_settings(profile)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def evaluate(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cosmos-evaluate", description="Run an evaluation suite as a flow.")
    parser.add_argument(
        "--suite", default="configs/eval/variants.toml", help="suite file (configs/eval/*.toml)"
    )
    parser.add_argument("--profile", help="settings profile (configs/<profile>.toml)")
    args = parser.parse_args(argv)
    settings = profile_settings(args.profile)
    if settings is None:
        return EXIT_INPUT
    prefect_defaults()
    from flows.evaluate import evaluate as evaluate_flow

    state = evaluate_flow(suite=args.suite, profile=args.profile, return_state=True)
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        print(f"error: {error}", file=sys.stderr)
        return error_exit_code(error) if isinstance(error, Exception) else 1
    from tasks.track import ui_hint

    result = state.result()
    experiment, parent = result["experiment"], result["parent_run_id"]
    print(f"\nMLflow: parent run {parent} in experiment '{experiment}'")
    print(f"  side by side: {', '.join(result['comparisons'])}")
    print(f"  table: cosmos-compare --experiment {experiment} --parent_run_id {parent}")
    print(f"Open the UI: {ui_hint(settings)}")
    return EXIT_OK


def evaluate_main() -> None:
    sys.exit(evaluate())


def sync(argv: Sequence[str] | None = None) -> int:
    """`cosmos-sync`: upload the MLflow runs spooled while the tracking server was unreachable."""
    parser = argparse.ArgumentParser(
        prog="cosmos-sync",
        description="Upload MLflow runs spooled while the tracking server was unreachable, then remove them "
        "from the spool (<output_dir>/.mlflow-spool unless spool_dir is set). Flow runs do this on start.",
    )
    parser.add_argument(
        "--profile", help="settings profile (configs/<profile>.toml): its tracking URI and spool"
    )
    parser.add_argument(
        "--unfinished", action="store_true", help="also upload runs that never finished, marked KILLED"
    )
    args = parser.parse_args(argv)
    settings = profile_settings(args.profile)
    if settings is None:
        return EXIT_INPUT
    from tasks.scrub import scrub
    from tasks.spool import server_reachable, spool_root, sync_spool

    report = sync_spool(settings, include_unfinished=args.unfinished)
    print(f"{spool_root(settings)} -> {scrub(settings.tracking_uri)}: {report.summary()}")
    for spooled, run_id in report.uploaded.items():
        print(f"  {spooled} -> run {run_id}")
    if report.waiting and not server_reachable(settings):
        print(
            f"error: tracking server {scrub(settings.tracking_uri)} unreachable; try again later",
            file=sys.stderr,
        )
        return 1
    return 1 if report.failed else EXIT_OK


def sync_main() -> None:
    sys.exit(sync())
