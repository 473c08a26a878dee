"""Resolve the layered settings of a run (defaults < configs/<profile>.toml < COSMOS_* < explicit)."""

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from cosmos_pipeline.bundle import Row
from cosmos_pipeline.settings import Settings, load_settings, request_rows


@task(name="resolve-settings", cache_policy=NONE)
def resolve_settings(profile: str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """The run's settings; every run records them (`config.json`), so it can be reproduced."""
    settings = load_settings(profile, **(overrides or {}))
    get_run_logger().info(
        "settings: profile %s, tracking %s, experiment %s",
        settings.profile,
        settings.tracking_uri,
        settings.experiment,
    )
    return settings


@task(name="resolve-requests", cache_policy=NONE, persist_result=False)
def resolve_rows(explicit: dict[str, Any], settings: Settings) -> list[Row]:
    """The batch's rows with their layered values: typed requests, or each row's problems."""
    rows = request_rows(explicit, settings)
    get_run_logger().info("%d request(s) from %s", len(rows), explicit.get("input_path") or "the parameters")
    return rows
