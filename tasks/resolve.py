"""Resolve the layered settings of a run (defaults < configs/<profile>.toml < COSMOS_* < explicit).

Parameters of a deployment run come from whoever can trigger it (the UI, the API, an event), so they
are untrusted: they may pick a profile by name and set the experiment names, request defaults and
acceleration options, but what the run may read and write, where it tracks, its retries and GPU
slots stay those of the worker's own environment (its COSMOS_PROFILE, e.g. `production`, and
COSMOS_* variables).
"""

import re
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from cosmos_pipeline.bundle import Problem, Row
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.settings import Settings, load_settings, request_rows
from tasks.scrub import install_log_scrubber, scrub

# What an untrusted caller may choose (names, request defaults, speed and memory options for its own
# generations); everything else is the operator's.
CALLER_KEYS = frozenset({"experiment", "eval_experiment", "request", "acceleration"})
PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def run_settings(profile: str | None, overrides: dict[str, Any] | None, untrusted: bool) -> Settings:
    """The run's settings; for untrusted parameters, the operator's keys from the worker's environment."""
    if not untrusted:
        return load_settings(profile, **(overrides or {}))
    if profile and not PROFILE_NAME.match(profile):
        raise InputError(
            f"profile {profile!r} must be the name of a profile in configs/ (letters, digits, _ -)"
        )
    refused = sorted(set(overrides or {}) - CALLER_KEYS)
    if refused:
        raise InputError(
            f"settings {refused} cannot be set by a deployment's parameters (only {sorted(CALLER_KEYS)}); "
            "the operator sets them in the worker's environment or its profile"
        )
    operator = load_settings(None)  # COSMOS_PROFILE and COSMOS_* of the worker
    chosen = load_settings(profile, **(overrides or {}))
    return operator.model_copy(
        update={"profile": chosen.profile, **{key: getattr(chosen, key) for key in CALLER_KEYS}}
    )


@task(name="resolve-settings", cache_policy=NONE)
def resolve_settings(
    profile: str | None = None, overrides: dict[str, Any] | None = None, evaluation: bool = False
) -> Settings:
    """The run's settings (untrusted when a deployment runs it); every run records them (`config.json`).
    `evaluation`: the log names the evaluation experiment, where an evaluation writes unless its suite
    names another.

    Also the flow run's start: secrets are kept out of its logs from here on. GX's shared process is not
    started here: a rejected or fully reused batch never needs it (~5 s of CPU where none runs yet), the
    advisories and the frame gate start it when they do."""
    from prefect.runtime import deployment

    install_log_scrubber()
    untrusted = deployment.id is not None
    settings = run_settings(profile, overrides, untrusted)
    get_run_logger().info(
        "settings: profile %s, tracking %s, experiment %s%s",
        settings.profile,
        scrub(settings.tracking_uri),
        settings.eval_experiment if evaluation else settings.experiment,
        ", parameters untrusted (deployment run)" if untrusted else "",
    )
    return settings


@task(name="resolve-requests", cache_policy=NONE, persist_result=False)
def resolve_requests(
    input_path: str | None, overrides: dict[str, Any] | None, settings: Settings
) -> list[Row]:
    """The batch's rows with their layered values: typed requests, or each row's problems. A problem with
    the whole invocation (a bundle that cannot be read, an unknown override) is one row's problem, so the
    batch's report states it like any other."""
    try:
        rows = request_rows({**(overrides or {}), "input_path": input_path or None}, settings)
    except InputError as error:
        return [Row(1, input_path or "parameters", {}, problems=[Problem(1, None, "input", str(error))])]
    get_run_logger().info("%d request(s) from %s", len(rows), input_path or "the parameters")
    return rows
