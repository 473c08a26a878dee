"""The whole stack on loopback, as `make stack` starts it: deployments served by process workers and warm
GPU workers, tracked on an MLflow server, read back through the Prefect and MLflow APIs.

The tests share one stack (starting it costs ~20 s); the one that kills a warm worker runs last.
"""

import contextlib
import json
import os
import re
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import requests
from mlflow import MlflowClient
from prefect.client.schemas.actions import DeploymentScheduleUpdate, DeploymentUpdate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.track import EXECUTION_PARAMS, KEY_TAG, PARENT_TAG, RUN_PARAMS
from tests.conftest import ASSETS, REPO

from .conftest import (
    DB_PASSWORD,
    TINY_OVERRIDES,
    Postgres,
    Stack,
    finished_runs,
    http_ok,
    prefect_client,
    stack_script,
    wait_until,
)

GENERATE, EVALUATE = "generate/generate", "evaluate-variants/evaluate-variants"


def trigger(stack: Stack, deployment: str, **parameters) -> UUID:
    with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api}):
        return run_deployment(deployment, parameters=parameters, timeout=0).id


def finished(stack: Stack, flow_run_ids: list[UUID], timeout: float = 240) -> list[FlowRun]:
    return finished_runs(stack.prefect_api, flow_run_ids, timeout)


def beats(client) -> list[tuple[str, dict]]:
    """The warm workers' heartbeats (Prefect variables), by name."""
    return [(v.name, v.value) for v in client.read_variables() if v.name.startswith("cosmos-beat-")]


def flow_logs(client, flow_run_id: UUID) -> str:
    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


def mlflow_runs(stack: Stack, experiment: str, filter_string: str = "") -> list:
    client = MlflowClient(stack.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], filter_string)


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def generate_parameters(stack: Stack, name: str, seed: int, **overrides) -> dict:
    return {
        "input_path": str(ASSETS / "text2world.json"),
        "profile": "tiny",
        "overrides": {**TINY_OVERRIDES, "name": name, "seed": seed, **overrides},
    }


def local_addresses() -> set[str]:
    """This host's addresses other than loopback (none on a machine with no network)."""
    found = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a documentation address: no packet is sent
            found.add(probe.getsockname()[0])
        except OSError:
            pass
    return {address for address in found if not address.startswith("127.")}


def test_stack_starts_with_the_documented_commands_and_listens_on_loopback(stack: Stack) -> None:
    for service in ("prefect-server", "mlflow-server", "worker-0", "worker-1", "warm-0", "warm-1"):
        os.kill(stack.pid(service), 0)  # alive
    assert http_ok(f"{stack.prefect_api}/health") and http_ok(f"{stack.tracking_uri}/health")
    with prefect_client(stack.prefect_api) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        workers = client.read_workers_for_work_pool("cosmos-gpu")
    assert {"generate", "evaluate-variants"} <= set(deployments)
    assert all(d.work_pool_name == "cosmos-gpu" for d in deployments.values())
    # prefect.yaml as Prefect deployed it: the nightly cron, and the evaluation's own default suite
    # (cosmos_pipeline.suites.DEFAULT_SUITE), not one restated in the file.
    evaluate = deployments["evaluate-variants"]
    assert [s.schedule.cron for s in evaluate.schedules] == ["0 2 * * *"] and evaluate.parameters == {}
    assert sorted(w.name for w in workers if w.status == "ONLINE") == sorted(
        f"{socket.gethostname()}-gpu{index}" for index in (0, 1)
    )
    automations = requests.post(f"{stack.prefect_api}/automations/filter", json={}, timeout=10).json()
    assert stack_script.ZOMBIES in {automation["name"] for automation in automations}
    # One GPU per worker: each pair of workers is pinned by its own environment.
    for index in (0, 1):
        for service in (f"worker-{index}", f"warm-{index}"):
            environ = Path(f"/proc/{stack.pid(service)}/environ").read_bytes().split(b"\0")
            assert f"CUDA_VISIBLE_DEVICES={index}".encode() in environ
    # Loopback only: started with --host 127.0.0.1, and not reachable on the host's other addresses.
    for service, port in (("prefect-server", stack.prefect_api.split(":")[2].split("/")[0]),
                          ("mlflow-server", stack.tracking_uri.rsplit(":", 1)[1])):  # fmt: skip
        command = Path(f"/proc/{stack.pid(service)}/cmdline").read_bytes().split(b"\0")
        assert command[command.index(b"--host") + 1] == b"127.0.0.1"
        for address in local_addresses():
            with socket.socket() as sock:
                sock.settimeout(2)
                assert sock.connect_ex((address, int(port))) != 0, (service, address)


def test_generate_deployment_runs_on_warm_workers_once_per_request(stack: Stack) -> None:
    """Three triggered runs over two warm workers: each worker loads the pipeline once and then loads nothing;
    the same request triggered again makes no second output and no second MLflow run."""
    parameters = [
        generate_parameters(
            stack, f"warm{index}", seed=index, output_path=str(stack.outputs / f"warm{index}.mp4")
        )
        for index in range(3)
    ]
    ids = [trigger(stack, GENERATE, **each) for each in parameters]
    [first] = finished(stack, ids[:1])
    assert first.state.is_completed(), first.state.message
    stamp = (stack.outputs / "warm0.mp4").stat().st_mtime_ns
    again = trigger(stack, GENERATE, **parameters[0])  # the same request again, while the others run
    runs = finished(stack, [*ids, again])
    assert [run.state.type.value for run in runs] == ["COMPLETED"] * 4, [run.state.message for run in runs]

    client = MlflowClient(stack.tracking_uri)
    tracked = mlflow_runs(stack, "cosmos-generate-tiny", "tags.asset LIKE 'warm%'")
    assert sorted(run.data.tags["asset"] for run in tracked) == ["warm0", "warm1", "warm2"]
    by_worker: dict[str, list] = {}
    for run in tracked:
        assert run.info.status == "FINISHED"
        params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
        assert set(params) == {*RUN_PARAMS, *EXECUTION_PARAMS} and params["model_id"] == "embedded:tiny"
        assert tags["prefect.deployment"] == "generate" and tags["prefect.flow_run_id"] in {
            str(i) for i in ids
        }
        assert len(tags[KEY_TAG]) == 64 and {"time/total_s", "output/sharpness"} <= set(metrics)
        name = f"{tags['asset']}.mp4"
        found = artifacts(client, run.info.run_id)
        assert {f"output/{name}", f"output/{name}.json", "prompt.txt", "config.json"} <= found
        assert json.loads((stack.outputs / f"{name}.json").read_text())["mlflow_run_id"] == run.info.run_id
        by_worker.setdefault(tags["worker"], []).append(metrics["pipeline_loaded"])
    # The warm workers generated (not the flow-run processes), each loading the pipeline once however
    # many runs it served; with three runs on two workers, one served at least two.
    assert set(by_worker) <= {f"{socket.gethostname()}-{stack.pid(f'warm-{i}')}" for i in (0, 1)}
    assert all(sum(loads) == 1.0 for loads in by_worker.values()), by_worker
    assert max(len(loads) for loads in by_worker.values()) >= 2

    reused = "1 request(s) already have their output; reusing it"
    with prefect_client(stack.prefect_api) as prefect:
        wait_until(lambda: reused in flow_logs(prefect, again), "the reuse in the flow run's log")
    assert len(mlflow_runs(stack, "cosmos-generate-tiny", "tags.asset = 'warm0'")) == 1
    assert (stack.outputs / "warm0.mp4").stat().st_mtime_ns == stamp
    assert sorted(path.name for path in stack.outputs.glob("warm0*")) == ["warm0.mp4", "warm0.mp4.json"]


def deployment_runs(client, deployment_id: UUID) -> list[FlowRun]:
    by_id = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    return client.read_flow_runs(deployment_filter=by_id)


def test_the_nightly_evaluation_is_scheduled_and_a_scheduled_run_completes(stack: Stack) -> None:
    """The server's scheduler plans prefect.yaml's cron (02:00 UTC); a schedule a few seconds ahead on the
    same deployment, with the shipped tiny suite on one asset, is started by a worker and compares variants.
    (With SQLAlchemy 2.1 the scheduler fails every loop and neither happens.)"""
    with prefect_client(stack.prefect_api) as client:
        deployment = client.read_deployment_by_name(EVALUATE)

        def nightly() -> bool:
            return any(
                run.state.is_scheduled()
                and (run.expected_start_time.hour, run.expected_start_time.minute) == (2, 0)
                for run in deployment_runs(client, deployment.id)
            )

        wait_until(nightly, "the nightly evaluation being scheduled", timeout=90)

    suite = (REPO / "configs" / "eval" / "tiny.toml").read_text()
    suite = suite.replace('name = "tiny-variants"', 'name = "stack-variants"')
    suite = suite.replace('  "../../assets/image2world.json",\n', "").replace("../../assets", str(ASSETS))
    (stack.inputs / "suite.toml").write_text(suite)
    soon = datetime.now(UTC) + timedelta(seconds=10)
    shipped = [DeploymentScheduleUpdate(schedule=s.schedule, active=s.active) for s in deployment.schedules]
    one_shot = DeploymentScheduleUpdate(
        schedule=IntervalSchedule(interval=timedelta(days=1), anchor_date=soon),
        active=True,
        max_scheduled_runs=1,
        parameters={"suite": str(stack.inputs / "suite.toml"), "profile": "tiny"},
    )
    scheduled: list[FlowRun] = []

    with prefect_client(stack.prefect_api) as client:

        def planned() -> bool:
            scheduled[:] = [
                run for run in deployment_runs(client, deployment.id)
                if abs((run.expected_start_time - soon).total_seconds()) < 1
            ]  # fmt: skip
            return bool(scheduled)

        client.update_deployment(deployment.id, DeploymentUpdate(schedules=[*shipped, one_shot]))
        try:
            wait_until(planned, "the scheduler creating the run 10 s ahead", timeout=60)
            [run] = finished(stack, [scheduled[0].id])
        finally:
            client.update_deployment(deployment.id, DeploymentUpdate(schedules=shipped))
    assert run.auto_scheduled and run.state.is_completed(), run.state.message
    [parent] = mlflow_runs(stack, "cosmos-evaluate-tiny", "tags.suite = 'stack-variants'")
    children = mlflow_runs(stack, "cosmos-evaluate-tiny", f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert parent.info.status == "FINISHED" and len(children) == 2  # 1 asset x 2 variants x 1 seed
    assert {child.data.tags["variant"] for child in children} == {"pre-trained", "post-trained"}
    assert all(child.info.status == "FINISHED" for child in children)
    found = artifacts(MlflowClient(stack.tracking_uri), parent.info.run_id)
    assert {"summary.json", "report.md", "comparison/text2world_warehouse-seed0.mp4"} <= found
    assert parent.data.metrics["cases"] == 2 and parent.data.metrics["failed_cases"] == 0


def test_hostile_deployment_parameters_are_refused_row_by_row(stack: Stack, tmp_path: Path) -> None:
    """A bundle whose rows try to read outside the input roots (.., absolute, symlink), write outside the
    output root, or ask for too much: every row refused with its reason, nothing read, nothing run."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.txt").write_text("the secret prompt")
    os.symlink(elsewhere / "secret.txt", stack.inputs / "link.txt")
    rows = [
        {"name": "dotdot", "prompt_path": "../" * 12 + str(elsewhere / "secret.txt").lstrip("/")},
        {"name": "absolute", "prompt_path": str(elsewhere / "secret.txt")},
        {"name": "symlink", "prompt_path": "link.txt"},
        {"name": "out", "prompt": "a robot", "output_path": str(elsewhere / "out.mp4")},
        {"name": "huge", "prompt": "x" * 5000},
        {"name": "frames", "prompt": "a robot", "num_output_frames": 2001},
    ]
    (stack.inputs / "hostile.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    parameters = {"input_path": str(stack.inputs / "hostile.jsonl"), "profile": "tiny"}
    [run] = finished(stack, [trigger(stack, GENERATE, **parameters)])

    assert run.state.is_failed() and "6 of 6 request(s) invalid" in run.state.message, run.state
    message = run.state.message
    for name in ("dotdot", "absolute", "symlink"):
        assert f"({name}): `prompt`: --prompt_path" in message
    assert message.count("outside the allowed input folders") == 3
    assert "(out): `policy`: output" in message and "outside the output folder" in message
    assert "(huge): `policy`: the prompt has 5000 characters; the limit is 4000" in message
    assert "(frames): `policy`: 2001 frames requested; the limit is 1001" in message
    # Nothing was generated, nothing written outside, and the secret reached no MLflow run.
    assert not (elsewhere / "out.mp4").exists()
    [rejected] = mlflow_runs(stack, "cosmos-generate-tiny", "tags.mode = 'validation'")
    assert rejected.info.status == "FAILED" and "the secret prompt" not in json.dumps(rejected.data.params)
    assert not mlflow_runs(stack, "cosmos-generate-tiny", "tags.asset = 'dotdot'")


def test_a_killed_warm_worker_loses_no_generation(stack: Stack) -> None:
    """SIGKILL the worker mid-generation: the flow sees its process gone (the same machine: no need to wait
    out the beats' silence), another worker generates it again in the same MLflow run; one output, one run,
    no partial file."""
    # Seconds of denoising (~20 ms a step on two idle cores) at the tiny size: the kill lands mid-way, and the
    # other worker's generation again costs little (at 256x448x29 the decode alone took 4.4 s).
    long = {"num_steps": 100}
    parameters = generate_parameters(
        stack, "killed", seed=7, output_path=str(stack.outputs / "killed.mp4"), **long
    )
    victim: dict = {}
    with prefect_client(stack.prefect_api) as client:
        earlier = {name for name, _ in beats(client)}
        flow_run_id = trigger(stack, GENERATE, **parameters)

        def generating() -> bool:
            victim.update(next((beat for name, beat in beats(client) if name not in earlier), {}))
            return bool(victim)

        wait_until(generating, "the generation starting on a warm worker")
    time.sleep(0.5)  # a moment into the generation (loading or denoising): nothing is written yet
    os.killpg(int(victim["worker"].rsplit("-", 1)[1]), signal.SIGKILL)
    [run] = finished(stack, [flow_run_id])

    assert run.state.is_completed(), run.state.message
    [tracked] = mlflow_runs(stack, "cosmos-generate-tiny", "tags.asset = 'killed'")
    assert tracked.info.status == "FINISHED"
    assert tracked.data.tags["worker"] != victim["worker"]  # the other worker generated it
    assert sorted(path.name for path in stack.outputs.iterdir() if "killed" in path.name) == [
        "killed.mp4", "killed.mp4.json",
    ]  # fmt: skip
    lost = f"warm worker {victim['worker']} is gone: its process ended"
    with prefect_client(stack.prefect_api) as client:
        wait_until(lambda: lost in flow_logs(client, flow_run_id), "the lost worker in the flow run's log")
        assert "submitting it again (1 of 1)" in flow_logs(client, flow_run_id)


def test_runs_are_stored_in_postgresql_and_its_password_is_nowhere(stack: Stack, postgres: Postgres) -> None:
    """The store URI (with a password) reached the MLflow server through its environment: every run the
    tests above tracked is a row in PostgreSQL, and the password is in no command line, log, printed
    line or recorded param/tag."""
    client = MlflowClient(stack.tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    assert len(runs) >= 8 and postgres.count("runs") == len(runs)
    seen = [stack.started, *(path.read_text(errors="replace") for path in (stack.folder / "logs").glob("*"))]
    seen += [json.dumps(run.data.params | run.data.tags) for run in runs]
    groups = {stack.pid(name) for name in ("prefect-server", "mlflow-server", "worker-0", "warm-0")}
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if proc.name.isdigit() and os.getpgid(int(proc.name)) in groups:
                seen.append((proc / "cmdline").read_bytes().decode(errors="replace"))
    assert len(seen) > len(runs) + 6 and not [text[:200] for text in seen if DB_PASSWORD in text]


def test_stack_down_stops_every_service_cleanly(stack: Stack) -> None:
    """Last: SIGTERM stops each service (warm workers included) without a traceback; the Prefect server's
    scheduler never failed (SQLAlchemy 2.1's bulk-DML error) and its task-run recorder lost no event."""
    pids = {name: stack.pid(name) for name in ("warm-0", "warm-1", "worker-0", "worker-1", "prefect-server")}
    alive = {name for name, pid in pids.items() if Path(f"/proc/{pid}").exists()}  # one was killed
    done = stack.script("down")
    assert done.returncode == 0, done.stdout + done.stderr
    for name, pid in pids.items():
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", name
    for name in ("warm-0", "warm-1"):
        log = stack.log(name)
        assert "Traceback" not in log, log[-2000:]
        assert name not in alive or log.rstrip().endswith("stopped"), log[-2000:]
    server = stack.log("prefect-server")
    assert "bulk DML" not in server, server[-3000:]  # the scheduler never failed
    # The task-run recorder may retry a batch (its KeyError follows SQLite's "database is locked" with many
    # writers), but it never drops an event.
    dropped = re.findall(r"Error flushing \d+ events \(\d+ to retry, (\d+) dropped\)", server)
    assert all(count == "0" for count in dropped), dropped
