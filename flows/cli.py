"""`cosmos-generate`: the command line, run as the `generate` Prefect flow with MLflow tracking.
`cosmos-evaluate`: an evaluation suite as an `evaluate-variants` flow run. `cosmos-sync`: spooled runs.

The order is the latency budget: the flags are parsed and every request is checked first
(`cosmos_pipeline.batch`, the same check the flows run), so bad input exits 2 at once, before Prefect,
MLflow or the model are imported. Then the call goes to the warm process (`flows.daemon`), which has all
of that imported and loaded; where there is none to use (keep-alive 0, or it is busy), the call runs here:
a temporary Prefect server starts when no PREFECT_API_URL names one, in its own session (`flows.server`),
while the libraries are imported, then the flow runs and the command prints where the MLflow runs are.

Ctrl-C or SIGTERM at any point ends the call cleanly: the generation stops at the next step, nothing is
half-written, the GPU's slot is free, the MLflow run is KILLED (`interrupted`), the temporary server
stops, one line goes to stderr, and the exit code is 130 (143 for SIGTERM). Imports stay inside the
functions so that even an interrupt during them gets that one line. Exit codes otherwise are
`cosmos_pipeline.cli`'s.
"""

import atexit
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report it
# Before Prefect is imported: no telemetry attempts offline. An explicit environment wins.
PREFECT_DEFAULTS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
IN_WARM_PROCESS = False  # set by `flows.daemon` in the warm process, which runs the calls handed to it


class Interrupted(KeyboardInterrupt):
    """The command was stopped by a signal; a KeyboardInterrupt, so every layer treats it as Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# The signal `interruptible` has not yet handled. Python drops an exception raised where it cannot propagate
# (a weakref callback, such as the one importlib runs when a module lock is freed during start-up's imports):
# `raise_if_interrupted` raises it again at the next checkpoint.
_pending: list[int] = []


def _raise_interrupted(signum: int, frame) -> None:
    _pending[:] = [signum]
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    if _pending:
        raise Interrupted(_pending[0])


def interruptible(command: Callable[[], int]) -> int:
    """Run `command` with SIGINT and SIGTERM raising `Interrupted`; an interrupt is one line and 130/143."""
    _pending.clear()
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in EXIT_INTERRUPTED}
    try:
        return command()
    except KeyboardInterrupt as interrupt:
        signum = interrupt.signum if isinstance(interrupt, Interrupted) else signal.SIGINT
    except Exception:
        # Raised in a callback from compiled code, the interrupt can come back as that code's own error
        # (pydantic-core's serializer, while Prefect's settings load: "PydanticSerializationError: ...
        # Interrupted: SIGINT"). The signal came first: it is still the interrupt.
        if not _pending:
            raise
        signum = _pending[0]
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)
    _pending.clear()
    print(
        f"interrupted ({signal.Signals(signum).name}): stopped, nothing half-written; a started run is "
        "marked KILLED in MLflow",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED[signum]


def print_runs(settings, flow_run_id: str) -> None:
    """Where this flow run's MLflow runs are, and how to open them (or where they wait to be synced)."""
    from tasks.report import search_runs, ui_hint
    from tasks.scrub import scrub
    from tasks.spool import experiment_id, mlflow_client, server_reachable, spool_root

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


def start_server():
    """A temporary Prefect server when none is configured (started now, waited for later), else None.

    Its address goes into the environment at once: Prefect reads its settings when first imported, and the
    imports should overlap the server's start."""
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if os.environ.get("PREFECT_API_URL"):
        return None
    from flows.server import TemporaryServer

    server = TemporaryServer()
    os.environ["PREFECT_API_URL"] = server.api_url
    return server


def prepare(settings) -> None:
    """What the flow will need, done while the temporary server starts: Prefect, MLflow and its store, and
    (when this process generates) diffusers' Cosmos pipeline code. Seconds each, overlapped, not added."""
    import flows.generate  # noqa: F401  (Prefect and the tasks)
    from tasks.spool import experiment_id, mlflow_client, server_reachable

    if server_reachable(settings):
        experiment_id(mlflow_client(settings), settings.experiment, settings)  # opens the store
    if not settings.warm_workers:
        from cosmos_pipeline.loading import import_pipeline_code

        import_pipeline_code()


def use_server(server) -> None:
    """Wait for the temporary server, if any; then stop for an interrupt the start-up's imports swallowed."""
    if server is not None:
        server.wait()
    raise_if_interrupted()


def stop_server(server) -> None:
    """Send Prefect's queued logs and events while the server still listens (they would otherwise retry
    against a stopped server for a minute at exit), then stop it and take its address back out of the
    environment (a later command in this process, or a process it starts, must not reach a stopped one)."""
    if server is None:
        return
    drain_prefect()
    server.stop()
    if os.environ.get("PREFECT_API_URL") == server.api_url:
        del os.environ["PREFECT_API_URL"]


def drain_prefect() -> None:
    if "prefect" in sys.modules:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for service in (APILogWorker, EventsWorker):
            service.drain_all(timeout=5)


def exit_now(code: int) -> NoReturn:
    """End the process once everything is written, without the interpreter's teardown: freeing torch's and
    the libraries' state took about 3 s on a 2-core machine, after the last output line. What that teardown
    would still have sent or ended is done first: Prefect's queued logs and events, the libraries' exit
    handlers (MLflow's among them), the output streams. (Not `mlflow.flush_async_logging()`: nothing here
    logs asynchronously, and it opens MLflow's default store, which created an empty `mlflow.db` in the
    caller's directory.)"""
    drain_prefect()
    atexit._run_exitfuncs()  # the libraries' own exit handlers (multiprocessing's clean-up among them)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def failure(state) -> tuple[str, int]:
    """A failed flow run's message and exit code."""
    from cosmos_pipeline.cli import EXIT_FAILURE, error_exit_code

    error = state.result(raise_on_failure=False)
    if isinstance(error, Exception):
        return str(error), error_exit_code(error)
    return state.message or str(state.type.value), EXIT_FAILURE


def generate_command(argv: Sequence[str] | None = None) -> int:
    from cosmos_pipeline.batch import check_batch
    from cosmos_pipeline.cli import EXIT_INPUT, EXIT_OK, acceleration_options, parse_args, split_run_options
    from cosmos_pipeline.errors import InputError
    from cosmos_pipeline.settings import load_settings, request_rows

    values, skip_existing, keep_going = split_run_options(parse_args(argv))
    profile = values.pop("profile", None)  # else COSMOS_PROFILE
    acceleration = acceleration_options(values)  # None: the profile's (or the default mode)
    explicit = {} if acceleration is None else {"acceleration": acceleration.model_dump(mode="json")}
    try:
        settings = load_settings(profile, **explicit)
        report = check_batch(request_rows(values, settings), settings.policy, skip_existing)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INPUT
    if not report.ok:
        print(f"error: {report.summary()}", file=sys.stderr)
        return EXIT_INPUT
    if not report.requests:
        print(f"nothing to do: all {len(report.reused)} request(s) already have their output")
        return EXIT_OK
    handed = hand_over("generate", argv, settings.keep_alive_s)
    if handed is not None:
        return handed

    start_gx()
    server = start_server()
    try:
        prepare(settings)
        use_server(server)
        from flows.generate import generate

        overrides = {key: value for key, value in values.items() if value is not None}
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
        message, code = failure(state)
        print(f"error: {message}", file=sys.stderr)
        return code
    finally:
        stop_server(server)


def start_gx() -> None:
    """GX's shared process, started now if none runs (it imports GX on another core): a call that gets this
    far generates here, and its advisories and frame gate need it."""
    from tasks import gx_process

    gx_process.start()


def hand_over(command: str, argv: Sequence[str] | None, keep_alive_s: float) -> int | None:
    """The call's exit code from the warm process (`flows.daemon`), or None: run it here (keep-alive off,
    this is the warm process, or it cannot take the call)."""
    if keep_alive_s <= 0 or IN_WARM_PROCESS:
        return None
    from flows import daemon

    return daemon.hand_over(command, sys.argv[1:] if argv is None else list(argv), keep_alive_s)


def run(argv: Sequence[str] | None = None) -> int:
    return interruptible(lambda: generate_command(argv))


def main() -> None:
    exit_now(run())


def profile_settings(profile: str | None):
    """The profile's settings, or None once the reason they cannot be loaded is printed."""
    from cosmos_pipeline.errors import InputError
    from cosmos_pipeline.settings import load_settings

    try:
        return load_settings(profile)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def evaluate_command(argv: Sequence[str] | None = None) -> int:
    import argparse

    from cosmos_pipeline.cli import EXIT_INPUT, EXIT_OK
    from cosmos_pipeline.suites import DEFAULT_SUITE

    parser = argparse.ArgumentParser(prog="cosmos-evaluate", description="Run an evaluation suite as a flow.")
    parser.add_argument("--suite", default=DEFAULT_SUITE, help="suite file (default: %(default)s)")
    parser.add_argument("--profile", help="settings profile (configs/<profile>.toml)")
    args = parser.parse_args(argv)
    settings = profile_settings(args.profile)
    if settings is None:
        return EXIT_INPUT
    handed = hand_over("evaluate", argv, settings.keep_alive_s)
    if handed is not None:
        return handed
    start_gx()
    server = start_server()
    try:
        use_server(server)
        from flows.evaluate import evaluate
        from tasks.report import ui_address, ui_hint

        raise_if_interrupted()  # one that these imports swallowed

        state = evaluate(suite=args.suite, profile=args.profile, return_state=True)
        if not state.is_completed():
            message, code = failure(state)
            print(f"error: {message}", file=sys.stderr)
            return code
        result = state.result()
        print(f"\nMLflow: parent run {result.parent_run_id} in experiment '{result.experiment}'")
        print(f"  side by side: {', '.join(result.comparisons)}")
        print(
            f"  table: cosmos-compare --experiment {result.experiment} --parent_run_id {result.parent_run_id}"
        )
        print(f"Open the UI: {ui_hint(settings)}")
        print(f"  then {ui_address(settings, f'#/runs/{result.parent_run_id}')} (which variant wins on what)")
        return EXIT_OK
    finally:
        stop_server(server)


def evaluate(argv: Sequence[str] | None = None) -> int:
    return interruptible(lambda: evaluate_command(argv))


def evaluate_main() -> None:
    exit_now(evaluate())


def sync(argv: Sequence[str] | None = None) -> int:
    """`cosmos-sync`: upload the MLflow runs spooled while the tracking server was unreachable."""
    import argparse

    from cosmos_pipeline.cli import EXIT_INPUT, EXIT_OK

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
    sys.exit(interruptible(sync))
