"""Two GPU hosts that share no disk, on loopback: media, outputs, Prefect results and MLflow artifacts
through an S3 server (moto in server mode), started the way the README says (`scripts/stack.py up
--servers-only --object-store ...` once, `scripts/stack.py worker` per host).

Each "host" is a process worker and a warm worker with its own HOME, TMPDIR (so its own GPU-slot locks),
cache (`COSMOS_CACHE_DIR`: media, the embedded model, the tracking spool) and stack folder; both run the
one checkout, as hosts run the same version, and requests may read only the bucket's inputs (and the
checkout's assets) and write only the bucket's outputs, so neither host reads the other's files. The
tests share one stack; the one that loses a host runs last.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest
from mlflow import MlflowClient
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks import gx_process
from tests.conftest import ASSETS, migrated_prefect_db
from tests.flows.test_interrupts import alive

from .conftest import (
    AWS_KEY_ID,
    AWS_SECRET,
    STACK_SCRIPT,
    TINY_OVERRIDES,
    ObjectStore,
    Postgres,
    finished_runs,
    free_port,
    kill_group,
    prefect_client,
    wait_until,
)  # fmt: skip

BUCKET = "cosmos-hosts"
STORE = f"s3://{BUCKET}/stack"
GENERATE = "generate/generate"
PROMPT = "A white robot arm in a warehouse aisle grips a cardboard box and lifts it out slowly."


@dataclass
class Host:
    """One host's workers: a stack folder (pid files, logs) and an environment of its own."""

    name: str
    folder: Path
    env: dict[str, str]
    ports: list[str]

    def script(self, *args: str) -> None:
        command = [sys.executable, str(STACK_SCRIPT), *args, "--dir", str(self.folder / "state"), *self.ports]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr

    def pid(self, service: str) -> int:
        return int((self.folder / "state" / "run" / f"{service}.pid").read_text())

    def log(self, service: str) -> str:
        return (self.folder / "state" / "logs" / f"{service}.log").read_text(errors="replace")

    def warm_name(self) -> str:
        return f"{socket.gethostname()}-{self.pid('warm-0')}"


@dataclass
class Hosts:
    prefect_api: str
    tracking_uri: str
    store: ObjectStore
    server: Host
    a: Host
    b: Host

    def trigger(
        self, input_path: str, experiment: str, env: dict[str, str] | None = None, **overrides
    ) -> UUID:
        """A flow run of the generate deployment; `env`: the flow run's own job variables, over its worker's
        environment (how an operator sets what a deployment's parameters may not)."""
        parameters = {
            "input_path": input_path,
            "profile": "tiny",
            "overrides": {**TINY_OVERRIDES, **overrides},
            "settings": {"experiment": experiment},
        }
        job_variables = {"env": env} if env else None
        with temporary_settings(updates={PREFECT_API_URL: self.prefect_api}):
            return run_deployment(GENERATE, parameters=parameters, job_variables=job_variables, timeout=0).id

    def finished(self, flow_run_ids: list[UUID], timeout: float = 480) -> list:
        return finished_runs(self.prefect_api, flow_run_ids, timeout)

    def logs(self, flow_run_id: UUID) -> str:
        with prefect_client(self.prefect_api) as client:
            found = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        return "\n".join(log.message for log in found)

    def beats(self, client) -> dict[str, dict]:
        return {v.name: v.value for v in client.read_variables() if v.name.startswith("cosmos-beat-")}

    def runs(self, experiment: str) -> list:
        client = MlflowClient(self.tracking_uri)
        found = client.get_experiment_by_name(experiment)
        return [] if found is None else client.search_runs([found.experiment_id])

    def put(self, key: str, data: bytes) -> str:
        self.store.filesystem().pipe_file(f"{BUCKET}/stack/{key}", data)
        return f"{STORE}/{key}"

    def outputs(self) -> dict[str, dict]:
        """Every object under the outputs prefix, by name, with its metadata."""
        fs = self.store.filesystem()
        return {
            Path(name).name: info for name, info in fs.find(f"{BUCKET}/stack/outputs", detail=True).items()
        }


def start_worker(host: Host) -> None:
    host.script("worker", "--name", host.name, "--gpus", "0", "--object-store", STORE)


@pytest.fixture(scope="module")
def hosts(
    tmp_path_factory: pytest.TempPathFactory,
    embedded_cache: Path,
    postgres: Postgres,
    object_store: ObjectStore,
) -> Iterator[Hosts]:
    root = tmp_path_factory.mktemp("hosts")
    object_store.filesystem().mkdir(BUCKET)
    ports = ["--prefect-port", str(free_port()), "--mlflow-port", str(free_port())]
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "COSMOS_", "AWS_")) and key != "XDG_RUNTIME_DIR"  # TMPDIR's
    }
    base |= object_store.env | {
        # The default: on a loaded 2-core machine beats were seen late by 15 s or more (false alarms).
        "COSMOS_WARM_LOST_AFTER_S": "30",
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick triggered runs up sooner than the default 10 s
    }
    machines = {}
    for name in ("server", "host-a", "host-b"):
        folder = root / name
        for part in ("home", "tmp", "cache"):
            (folder / part).mkdir(parents=True)
        if (embedded_cache / "embedded").is_dir():  # the model as a host would have it: its own copy
            shutil.copytree(embedded_cache / "embedded", folder / "cache" / "embedded")
        env = base | {"HOME": str(folder / "home"), "TMPDIR": str(folder / "tmp"),
                      "COSMOS_CACHE_DIR": str(folder / "cache")}  # fmt: skip
        machines[name] = Host(name, folder, env, ports)
    machines["server"].env["MLFLOW_BACKEND_STORE_URI"] = postgres.uri()  # only the server knows the database
    prefect_port, mlflow_port = ports[1], ports[3]
    running = Hosts(
        f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}", object_store,
        machines["server"], machines["host-a"], machines["host-b"],
    )  # fmt: skip
    migrated_prefect_db(running.server.folder / "state" / "prefect" / "prefect.db")  # its PREFECT_HOME
    try:
        running.server.script("up", "--servers-only", "--object-store", STORE)
        with ThreadPoolExecutor(2) as pool:  # the two hosts start at once, as real ones would
            started = [pool.submit(start_worker, host) for host in (running.a, running.b)]
        for each in started:
            each.result()
        yield running
    finally:
        with ThreadPoolExecutor(2) as pool:  # the hosts stop at once, then the servers they report to
            for stopping in [pool.submit(host.script, "down") for host in (running.a, running.b)]:
                with contextlib.suppress(Exception):
                    stopping.result()
        with contextlib.suppress(Exception):
            running.server.script("down")
        for host in (running.a, running.b, running.server):
            run_dir = host.folder / "state" / "run"
            for pid_file in run_dir.glob("*.pid") if run_dir.is_dir() else []:
                kill_group(int(pid_file.read_text()))
            gx_process.stop(host.folder / "tmp" / f"cosmos-warm-{os.getuid()}")  # the host's GX process


@pytest.fixture(scope="module", autouse=True)
def aws_environment(object_store: ObjectStore) -> Iterator[None]:
    """This process reads the bucket and the MLflow artifacts stored there like a host does."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in object_store.env.items():
            patch.setenv(key, value)
        yield


def test_a_batch_is_served_by_both_hosts_through_the_bucket(hosts: Hosts) -> None:
    """Two batches from bundles in the bucket, one per host: outputs and sidecars land in the bucket only,
    every run is tracked with its artifacts readable through the MLflow API (proxied by the server into the
    bucket, and written there directly for an experiment whose artifact root is the bucket), no credential
    is recorded, and the same batch triggered again reuses what the bucket holds."""
    image = (ASSETS / "media" / "warehouse_robot.png").read_bytes()
    hosts.put("inputs/robot.png", image)
    bundles = []
    for batch, parts in ((1, "ab"), (2, "a")):  # two rows, then one: four generations cost too much time
        rows = [
            {
                "name": f"hosts-{batch}{part}",
                "input_path": "robot.png",
                "prompt": PROMPT,
                "seed": batch * 10 + seed,
            }
            for seed, part in enumerate(parts)
        ]
        bundles.append(
            hosts.put(f"inputs/batch-{batch}.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
        )
    MlflowClient(hosts.tracking_uri).create_experiment("hosts-direct", artifact_location=f"{STORE}/direct")
    ids = [hosts.trigger(bundles[0], "hosts-proxied"), hosts.trigger(bundles[1], "hosts-direct")]
    runs = hosts.finished(ids)
    assert [run.state.type.value for run in runs] == ["COMPLETED"] * 2, [run.state.message for run in runs]

    # Served by both hosts: each flow run on its own host's process worker, generations on both warm workers.
    for flow_run_id in ids:
        assert [h.name for h in (hosts.a, hosts.b) if str(flow_run_id) in h.log("worker-0")] != []
    assert {h.name for h in (hosts.a, hosts.b) for i in ids if str(i) in h.log("worker-0")} == {
        "host-a",
        "host-b",
    }
    tracked = hosts.runs("hosts-proxied") + hosts.runs("hosts-direct")
    assert sorted(run.data.tags["asset"] for run in tracked) == ["hosts-1a", "hosts-1b", "hosts-2a"]
    assert {run.data.tags["worker"] for run in tracked} == {hosts.a.warm_name(), hosts.b.warm_name()}

    # Every output and its sidecar in the bucket, nowhere else; the record names the URIs.
    outputs = hosts.outputs()
    assert sorted(outputs) == sorted(f"hosts-{n}.mp4{s}" for n in ("1a", "1b", "2a") for s in ("", ".json"))
    fs, client = hosts.store.filesystem(), MlflowClient(hosts.tracking_uri)
    seen = []
    for run in tracked:
        assert run.info.status == "FINISHED"
        name = run.data.tags["asset"]
        sidecar = fs.cat_file(f"{BUCKET}/stack/outputs/{name}.mp4.json")
        record = json.loads(sidecar)
        assert record["mlflow_run_id"] == run.info.run_id
        assert record["request"]["output_path"] == f"{STORE}/outputs/{name}.mp4"
        assert record["request"]["input_path"] == f"{STORE}/inputs/robot.png"
        assert run.data.tags["input_sha256"] == hashlib.sha256(image).hexdigest()
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "output")}
        assert artifacts == {f"output/{name}.mp4", f"output/{name}.mp4.json"}
        local = client.download_artifacts(
            run.info.run_id, f"output/{name}.mp4.json", str(hosts.server.folder)
        )
        assert Path(local).read_bytes() == sidecar
        config = client.download_artifacts(
            run.info.run_id, "config.json", str(hosts.server.folder / run.info.run_id)
        )
        seen += [sidecar.decode(), Path(config).read_text(), json.dumps(run.data.params | run.data.tags)]
    stored = fs.find(f"{BUCKET}/stack")
    assert any(name.startswith(f"{BUCKET}/stack/mlartifacts/") for name in stored)  # proxied into the bucket
    assert any(name.startswith(f"{BUCKET}/stack/direct/") for name in stored)  # written there by the hosts
    assert any(name.startswith(f"{BUCKET}/stack/prefect/") for name in stored)  # warm workers' parameters
    for host in (hosts.a, hosts.b):
        assert not list(host.folder.rglob("*.mp4")), host.name  # outputs only in the bucket
        blobs = list((host.folder / "cache" / "media").glob("*/robot.png"))  # fetched once, named by content
        assert [blob.parent.name for blob in blobs] == [hashlib.sha256(image).hexdigest()], host.name
        seen += [host.log(service) for service in ("worker-0", "warm-0")]
    seen += [hosts.logs(flow_run_id) for flow_run_id in ids]
    assert not [text[:200] for text in seen if AWS_SECRET in text or AWS_KEY_ID in text]

    # Idempotent against the store: the same batch again reuses both outputs, makes no run and no object.
    [again] = hosts.finished([hosts.trigger(bundles[0], "hosts-proxied")])
    assert again.state.is_completed(), again.state.message
    # A flow run's last logs may reach the server after its final state (sent in batches).
    reused = "all 2 request(s) valid; 2 already have their output"
    wait_until(lambda: reused in hosts.logs(again.id), "the reuse in the flow run's log")
    assert len(hosts.runs("hosts-proxied")) == 2
    assert {name: info["ETag"] for name, info in hosts.outputs().items()} == {
        name: info["ETag"] for name, info in outputs.items()
    }


def test_hostile_uris_are_refused_row_by_row(hosts: Hosts) -> None:
    """Another bucket, `..` in a key (written out, or relative in a bundle in the bucket), a `file://` URI
    to the other host's cache, and outputs outside the output prefix: every row refused, nothing read."""
    fs = hosts.store.filesystem()
    fs.mkdir("other-bucket")
    fs.pipe_file("other-bucket/secret.txt", b"the secret prompt")
    fs.pipe_file("other-bucket/robot.png", (ASSETS / "media" / "warehouse_robot.png").read_bytes())
    [elsewhere] = list((hosts.b.folder / "cache" / "media").glob("*/robot.png"))
    rows = [
        {"name": "other-bucket", "prompt": PROMPT, "input_path": "s3://other-bucket/robot.png"},
        {"name": "prompt-elsewhere", "prompt_path": "s3://other-bucket/secret.txt"},
        {"name": "dotdot", "prompt": PROMPT, "input_path": f"{STORE}/inputs/../outputs/hosts-1a.png"},
        {"name": "relative", "prompt": PROMPT, "input_path": "../../../other-bucket/robot.png"},
        {"name": "file", "prompt": PROMPT, "input_path": f"file://{elsewhere}"},
        {"name": "out-bucket", "prompt": PROMPT, "output_path": "s3://other-bucket/out.mp4"},
        {"name": "out-local", "prompt": PROMPT, "output_path": str(hosts.a.folder / "out.mp4")},
    ]
    bundle = hosts.put("inputs/hostile.jsonl", "".join(json.dumps(row) + "\n" for row in rows).encode())
    [run] = hosts.finished([hosts.trigger(bundle, "hosts-hostile")])

    message = run.state.message
    assert run.state.is_failed() and "7 of 7 request(s) invalid" in message, run.state
    assert message.count("outside the allowed input folders") == 3  # other bucket, its prompt, file://
    assert "(dotdot): `input_path`:" in message and "(relative): `input_path`:" in message
    assert message.count("`..` in the key is not accepted") == 2
    assert message.count("outside the output folder") == 2
    assert fs.find("other-bucket") == ["other-bucket/robot.png", "other-bucket/secret.txt"]
    assert not (hosts.a.folder / "out.mp4").exists()
    [rejected] = hosts.runs("hosts-hostile")
    assert rejected.info.status == "FAILED" and "the secret prompt" not in json.dumps(rejected.data.params)


def test_a_lost_host_loses_no_generation(hosts: Hosts) -> None:
    """Host A generates a request whose flow runs on host B, and is lost: every process of it stops (SIGSTOP;
    to B, a host that died, hung or was cut off looks the same: its beats stop). B's flow sees the silence and
    B's warm worker generates it into the same MLflow run; one output, one run. (Killed, A's process would
    be seen gone at once: the hosts share this machine.)

    Placement is arranged by what runs: A's process worker is stopped (the flow run goes to B) and B's warm
    worker too (the generation goes to A), then B's warm worker comes back while A is lost."""
    os.killpg(hosts.a.pid("worker-0"), signal.SIGTERM)
    os.killpg(hosts.b.pid("warm-0"), signal.SIGTERM)
    wait_until(lambda: not alive(hosts.a.pid("worker-0")) and not alive(hosts.b.pid("warm-0")), "the stops")
    victim = hosts.a.warm_name()
    # About 2 s of denoising on two idle cores (16 steps took 0.3 s: `benchmarks/generation_sizes.py`), so
    # that host A is stopped mid-generation, not after it, however late its first beat is seen.
    long = {"num_steps": 100}
    bundle = hosts.put("inputs/killed.json", json.dumps({"name": "hosts-killed", "input_path": "robot.png",
                                                          "prompt": PROMPT, "seed": 7}).encode())  # fmt: skip
    with prefect_client(hosts.prefect_api) as client:
        earlier = set(hosts.beats(client))
        # The least silence allowed (three beats) instead of the hosts' 30 s: with host A stopped right after
        # its first beat, only a real loss can be seen, and the test waits 15 s less.
        flow_run_id = hosts.trigger(bundle, "hosts-killed", env={"COSMOS_WARM_LOST_AFTER_S": "15"}, **long)
        started = lambda: any(  # noqa: E731
            beat.get("worker") == victim for name, beat in hosts.beats(client).items() if name not in earlier
        )
        wait_until(started, "the generation starting on host A")
    os.killpg(hosts.a.pid("warm-0"), signal.SIGSTOP)  # host A is lost: no process of it runs again
    try:
        start_worker(hosts.b)  # B's warm worker back
        [run] = hosts.finished([flow_run_id])
    finally:
        os.killpg(hosts.a.pid("warm-0"), signal.SIGKILL)

    assert run.state.is_completed(), run.state.message
    assert str(flow_run_id) in hosts.b.log("worker-0")
    [tracked] = hosts.runs("hosts-killed")
    assert tracked.info.status == "FINISHED" and tracked.data.tags["worker"] == hosts.b.warm_name()
    assert sorted(name for name in hosts.outputs() if "killed" in name) == [
        "hosts-killed.mp4", "hosts-killed.mp4.json",
    ]  # fmt: skip
    lost = f"warm worker {victim} stopped beating"
    wait_until(lambda: lost in hosts.logs(flow_run_id), "the lost worker in the flow run's log")
    [silent] = re.findall(rf"{re.escape(lost)} (\d+) s ago", hosts.logs(flow_run_id))
    assert 15 <= int(silent) < 30  # the flow run's own job variable, not the worker's 30 s
    assert "submitting it again (1 of" in hosts.logs(flow_run_id)
