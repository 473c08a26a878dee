"""prefect.yaml: every entrypoint imports and its parameters bind (Prefect deploying the file: test_stack)."""

import inspect
from importlib import import_module
from pathlib import Path

import pytest
import yaml
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "prefect.yaml").read_text())
DEPLOYMENTS = {deployment["name"]: deployment for deployment in CONFIG["deployments"]}


@pytest.mark.parametrize("name", list(DEPLOYMENTS))
def test_entrypoint_imports_and_parameters_bind(name: str) -> None:
    deployment = DEPLOYMENTS[name]
    path, function = deployment["entrypoint"].split(":")
    flow = getattr(import_module(path.removesuffix(".py").replace("/", ".")), function)
    assert isinstance(flow, Flow)
    inspect.signature(flow.fn).bind(**deployment.get("parameters", {}))
    for value in deployment.get("parameters", {}).values():
        if str(value).endswith((".json", ".toml")):
            assert (REPO / value).is_file(), value


def test_evaluation_is_scheduled_and_generation_triggered() -> None:
    [schedule] = DEPLOYMENTS["evaluate-variants"]["schedules"]
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert DEPLOYMENTS["generate"]["triggers"][0]["expect"] == ["cosmos.generate.requested"]
    for deployment in DEPLOYMENTS.values():
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env["COSMOS_PROFILE"] == "production" and "HF_HOME" in env
        # Job variables override the worker's environment: each worker's own GPU pin and tracking server win.
        assert not {"CUDA_VISIBLE_DEVICES", "COSMOS_TRACKING_URI"} & set(env)
