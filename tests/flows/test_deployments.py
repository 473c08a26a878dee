"""prefect.yaml: every entrypoint imports, its parameters bind, and Prefect accepts the file."""

import inspect
import os
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest
import yaml
from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
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


def test_prefect_deploys_the_file(prefect_api: str) -> None:
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="cosmos-gpu", type="process"), overwrite=True)
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with get_client(sync_client=True) as client:
        generate = client.read_deployment_by_name("generate/generate")
        evaluate = client.read_deployment_by_name("evaluate-variants/evaluate-variants")
    assert generate.work_pool_name == evaluate.work_pool_name == "cosmos-gpu"
    assert evaluate.schedules and evaluate.schedules[0].schedule.cron == "0 2 * * *"
    assert evaluate.parameters == {}  # the flow's own default suite (cosmos_pipeline.suites.DEFAULT_SUITE)
