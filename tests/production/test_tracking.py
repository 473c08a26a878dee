"""Tracking never loses a run: an MLflow server that is down, or goes down mid-run, costs no generation;
the run is spooled and uploaded complete later. And no secret reaches what a run records.

A real `mlflow server` on loopback, stopped and started by the tests; flows run in this process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from cosmos_pipeline.sidecar import read_sidecar
from flows.generate import generate
from tasks.spool import JOURNAL, SPOOL_PREFIX
from tasks.track import EXECUTION_PARAMS, KEY_TAG, RUN_PARAMS, GenerationRecord
from tests.conftest import ASSETS, TINY_FLAGS

from .conftest import MlflowServer

pytestmark = pytest.mark.usefixtures("prefect_api")

# What every generation run holds, whichever way it reached the server.
ARTIFACTS = {
    "prompt.txt",
    "config.json",
    "validation/requests.json",
    "validation/frames.json",
    "frame_statistics.json",
    "input/warehouse_robot.png",
}


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def settings_for(server: MlflowServer, tmp_path: Path, experiment: str) -> dict:
    return {"tracking_uri": server.uri, "output_dir": str(tmp_path / "outputs"), "experiment": experiment}


def run_image2world(settings: dict, output: Path, seed: int = 3) -> GenerationRecord:
    state = generate(
        input_path=str(ASSETS / "image2world.json"),
        overrides={**TINY_FLAGS, "output_path": str(output), "seed": seed},
        settings=settings,
        return_state=True,
    )
    assert state.is_completed(), state
    [record] = state.result()
    return record


def assert_complete(client: MlflowClient, run_id: str, output: Path) -> None:
    """The run holds everything a live run holds: params, tags, metrics with their steps, artifacts."""
    run = client.get_run(run_id)
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED" and run.info.end_time >= run.info.start_time
    assert set(params) == {*RUN_PARAMS, *EXECUTION_PARAMS}
    assert {
        "version.torch",
        "mlflow.source.git.commit",
        "pipeline.execution_device",
        "acceleration.compile",
    } <= set(tags)
    assert tags["mode"] == "image2world" and len(tags[KEY_TAG]) == 64 and tags["output_path"] == str(output)
    assert {"time/total_s", "pipeline_loaded", "output/conditioning_ssim"} <= set(metrics)
    assert sorted(m.step for m in client.get_metric_history(run_id, "time/step_s")) == [0, 1]
    assert len(client.get_metric_history(run_id, "frame/mean_luma")) == 9
    found = artifacts(client, run_id)
    assert ARTIFACTS | {f"output/{output.name}", f"output/{output.name}.json"} <= found
    assert len([path for path in found if path.startswith("images/keyframes") and path.endswith(".png")]) == 3
    sidecar = json.loads(Path(client.download_artifacts(run_id, f"output/{output.name}.json")).read_text())
    assert sidecar["mlflow_run_id"] == run_id == read_sidecar(output)["mlflow_run_id"]


def test_server_down_the_run_is_spooled_and_cosmos_sync_uploads_it(mlflow_server, tmp_path) -> None:
    mlflow_server.stop()  # nothing listens on the tracking port
    settings, output = settings_for(mlflow_server, tmp_path, "spool-down"), tmp_path / "outputs" / "robot.mp4"
    record = run_image2world(settings, output)

    spooled = record.run_id
    assert spooled.startswith(SPOOL_PREFIX) and output.is_file()
    assert read_sidecar(output)["mlflow_run_id"] == spooled
    journal = tmp_path / "outputs" / ".mlflow-spool" / spooled / JOURNAL
    ops = [json.loads(line) for line in journal.read_text().splitlines()]
    assert ops[0]["op"] == "create" and ops[-1] == {**ops[-1], "op": "terminate", "status": "FINISHED"}
    assert {"log", "artifact", "table", "image"} <= {op["op"] for op in ops}

    mlflow_server.start()
    env = {"COSMOS_TRACKING_URI": mlflow_server.uri, "COSMOS_OUTPUT_DIR": str(tmp_path / "outputs")}
    done = cosmos_sync(env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 run(s) uploaded" in done.stdout

    client = MlflowClient(mlflow_server.uri)
    [run] = client.search_runs([client.get_experiment_by_name("spool-down").experiment_id])
    assert run.info.start_time == ops[0]["start_time"] and run.info.end_time == ops[-1]["end_time"]
    assert_complete(client, run.info.run_id, output)
    assert not journal.parent.exists()


def test_server_lost_mid_run_the_rest_is_spooled_and_the_next_flow_run_syncs_it(
    mlflow_server, tmp_path, monkeypatch
) -> None:
    import tasks.postprocess

    mlflow_server.start()
    settings, output = settings_for(mlflow_server, tmp_path, "spool-lost"), tmp_path / "outputs" / "robot.mp4"
    real = tasks.postprocess.postprocess

    def server_dies_now(generation, record=None):  # after the run was created, before it is tracked
        mlflow_server.stop()
        return real(generation, record)

    monkeypatch.setattr(tasks.postprocess, "postprocess", server_dies_now)
    record = run_image2world(settings, output)
    monkeypatch.setattr(tasks.postprocess, "postprocess", real)

    run_id = record.run_id
    assert not run_id.startswith(SPOOL_PREFIX) and output.is_file()  # created live, finished in the spool
    ops = [json.loads(line) for line in (tmp_path / "outputs" / ".mlflow-spool" / run_id / JOURNAL).open()]
    assert ops[0] == {**ops[0], "op": "attach", "run_id": run_id} and ops[-1]["op"] == "terminate"

    mlflow_server.start()
    run_image2world(settings, tmp_path / "outputs" / "next.mp4", seed=4)  # its start syncs the spool
    client = MlflowClient(mlflow_server.uri)
    assert_complete(client, run_id, output)
    experiment = client.get_experiment_by_name("spool-lost").experiment_id
    key = client.get_run(run_id).data.tags[KEY_TAG]
    assert len(client.search_runs([experiment], f"tags.{KEY_TAG} = '{key}'")) == 1  # no duplicate
    assert not (tmp_path / "outputs" / ".mlflow-spool" / run_id).exists()


def test_no_secret_reaches_params_tags_artifacts_sidecars_or_logs(mlflow_server, tmp_path) -> None:
    mlflow_server.start()
    password = "pw-5ecr3t-0f-the-db"
    settings = settings_for(mlflow_server, tmp_path, "secrets")
    settings["tracking_uri"] = mlflow_server.uri.replace("http://", f"http://cosmos:{password}@")
    output = tmp_path / "outputs" / "robot.mp4"
    state = generate(
        input_path=str(ASSETS / "image2world.json"),
        overrides={**TINY_FLAGS, "output_path": str(output)},
        settings=settings,
        return_state=True,
    )
    assert state.is_completed(), state
    [record] = state.result()
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(record.run_id)
    recorded = [json.dumps(run.data.params), json.dumps(run.data.tags)]
    for path in artifacts(client, run.info.run_id):
        if path.endswith((".json", ".txt", ".md")):
            recorded.append(Path(client.download_artifacts(run.info.run_id, path)).read_text())
    recorded.append(output.with_name(output.name + ".json").read_text())  # the sidecar on disk
    with get_client(sync_client=True) as prefect:
        logs = prefect.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    recorded += [log.message for log in logs]
    assert any("cosmos:***@127.0.0.1" in text for text in recorded)  # the URI is recorded, masked
    assert not [text[:200] for text in recorded if password in text]


def cosmos_sync(env: dict[str, str]) -> subprocess.CompletedProcess:
    """The documented command, in a new process, with this environment minus the test session's settings."""
    plain = {key: value for key, value in os.environ.items()
             if not key.startswith(("COSMOS_", "PREFECT_")) or key == "COSMOS_CACHE_DIR"}  # fmt: skip
    command = [str(Path(sys.executable).parent / "cosmos-sync")]
    return subprocess.run(command, capture_output=True, text=True, env={**plain, **env}, timeout=120)
