"""The production stack on loopback, started the way a user starts it (scripts/stack.py), and an MLflow
tracking server that tests can stop and start again. Every process started here is stopped by the
fixture that started it (by process group), whatever the test did.
"""

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pgserver
import pytest

from tests.conftest import ASSETS, REPO, wait_until

STACK_SCRIPT = REPO / "scripts" / "stack.py"
_spec = importlib.util.spec_from_file_location("stack_script", STACK_SCRIPT)
stack_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stack_script)
# A generation that takes about a second on a 2-core CPU, as the README's tiny profile runs it.
TINY_OVERRIDES = {"height": 64, "width": 112, "num_output_frames": 9, "num_steps": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def prefect_client(api: str) -> Iterator:
    """One client of the Prefect API at `api` for a whole wait: building one per poll costs ~30 ms of CPU
    (its HTTP client's set-up), twice a second."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client


def finished_runs(api: str, flow_run_ids: list, timeout: float) -> list:
    """The flow runs, in the order given, once every one of them is in a final state (one request a poll)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs: list = []
    these = FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
    with prefect_client(api) as client:

        def done() -> bool:
            found = {run.id: run for run in client.read_flow_runs(flow_run_filter=these)}
            runs[:] = [found[run_id] for run_id in flow_run_ids if run_id in found]
            return len(runs) == len(flow_run_ids) and all(run.state and run.state.is_final() for run in runs)

        wait_until(done, f"flow runs {flow_run_ids} finishing", timeout)
    return runs


def http_ok(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Stack:
    """A running stack: where it lives, how to reach it, where requests may read and write."""

    folder: Path
    prefect_api: str
    tracking_uri: str
    inputs: Path
    outputs: Path
    env: dict[str, str]
    command: list[str]
    started: str = ""  # what `up` printed

    def pid(self, service: str) -> int:
        return int((self.folder / "run" / f"{service}.pid").read_text())

    def log(self, service: str) -> str:
        return (self.folder / "logs" / f"{service}.log").read_text(errors="replace")

    def script(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.command, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )


# In the stack's MLflow store URI; the database accepts any (trust), so it only has to stay out of sight.
DB_PASSWORD = "pg-pa55-never-shown"


@dataclass
class Postgres:
    """A PostgreSQL server (pgserver's bundled binaries, with `pg_trgm`, on a Unix socket only) with a
    `mlflow` and a `prefect` database."""

    socket_dir: Path

    def uri(self, password: str = DB_PASSWORD) -> str:
        """SQLAlchemy's URI for psycopg 3, what the README tells users to pass as the backend store."""
        return f"postgresql+psycopg://postgres:{password}@/mlflow?host={self.socket_dir}"

    def prefect_uri(self, password: str = DB_PASSWORD) -> str:
        """Prefect's database URI (its asyncpg driver), as the README gives it."""
        return f"postgresql+asyncpg://postgres:{password}@/prefect?host={self.socket_dir}"

    def count(self, table: str) -> int:
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), user="postgres", dbname="mlflow") as connection:
            return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    # Not under pytest's 0700 temp folders: as root, pgserver runs postgres as its own system user.
    top = Path(tempfile.mkdtemp(prefix="cosmos-pg-"))
    server = pgserver.get_server(top / "data", cleanup_mode="delete")
    try:
        server.psql("CREATE DATABASE mlflow;")
        server.psql("CREATE DATABASE prefect;")
        yield Postgres(Path(server.get_postmaster_info().socket_dir))
    finally:
        server.cleanup()
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, embedded_cache: Path, postgres: Postgres
) -> Iterator[Stack]:
    """Prefect and MLflow servers on PostgreSQL, work pool, deployments, two process workers and two warm
    workers.

    Two "GPUs" on a CPU machine: each worker pair is pinned to its own CUDA_VISIBLE_DEVICES, and both
    share this host's CPU slot, so the slot allows two generations at once. Both servers keep their state
    in the multi-user store the README documents, PostgreSQL.
    """
    root = tmp_path_factory.mktemp("stack")
    inputs, outputs = root / "inputs", root / "outputs"
    inputs.mkdir()
    prefect_port, mlflow_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "COSMOS_"))}
    # COSMOS_WARM_LOST_AFTER_S stays the default (30 s): at the least allowed, 15 s (three beats), a warm
    # worker starved of CPU on a loaded 2-core machine was taken for lost and its request generated twice.
    env |= {
        "COSMOS_CACHE_DIR": str(embedded_cache),
        "COSMOS_POLICY__INPUT_ROOTS": json.dumps([str(inputs), str(ASSETS)]),
        "COSMOS_POLICY__OUTPUT_ROOT": str(outputs),
        "COSMOS_OUTPUT_DIR": str(outputs),
        "COSMOS_GPU_SLOTS": "2",
        "COSMOS_WARM_RESUBMISSIONS": "1",
        "COSMOS_RETRY_DELAY_S": "0",
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick triggered runs up sooner than the default 10 s
        # Both servers on PostgreSQL, given as the README tells users to (in the environment). On SQLite,
        # Prefect's server sometimes held a write for its 60 s busy timeout (README "Production").
        "MLFLOW_BACKEND_STORE_URI": postgres.uri(),
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres.prefect_uri(),
    }
    folder = root / "state"
    command = [sys.executable, str(STACK_SCRIPT), "--dir", str(folder), "--prefect-port", str(prefect_port),
               "--mlflow-port", str(mlflow_port), "--gpus", "2"]  # fmt: skip
    prefect_api, tracking_uri = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"
    running = Stack(folder, prefect_api, tracking_uri, inputs, outputs, env, command)
    try:
        done = running.script("up")
        assert done.returncode == 0, done.stdout + done.stderr
        running.started = done.stdout + done.stderr
        yield running
    finally:
        running.script("down", timeout=120)
        for pid_file in (folder / "run").glob("*.pid") if (folder / "run").is_dir() else []:
            kill_group(int(pid_file.read_text()))


@dataclass
class MlflowServer:
    """An MLflow tracking server on a fixed loopback port that a test can stop and start again."""

    port: int
    root: Path
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.process is not None:
            return
        command = [
            str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
            "--port", str(self.port), "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "mlartifacts"), "--workers", "1",
        ]  # fmt: skip
        log = open(self.root / "mlflow.log", "ab")  # noqa: SIM115 (the server keeps it)
        env = {**os.environ, **stack_script.MLFLOW_SERVER_ENV}  # as scripts/stack.py starts it
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        wait_until(lambda: http_ok(f"{self.uri}/health"), "the MLflow server start")

    def stop(self) -> None:
        if self.process is None:
            return
        kill_group(self.process.pid)
        self.process.wait(timeout=30)
        self.process = None
        wait_until(lambda: not http_ok(f"{self.uri}/health"), "the MLflow server stop")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """Stopped at first; `start()` / `stop()` it. Always stopped at the end of the module."""
    server = MlflowServer(free_port(), tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        server.stop()


# Credentials the S3 server accepts (moto takes any), shaped like real ones so that a leak would show.
AWS_KEY_ID, AWS_SECRET = "AKIAHOSTSTEST0000001", "hosts-test-secret-never-recorded-0000001"


@dataclass
class ObjectStore:
    """An S3 server (moto in server mode) on loopback, and the AWS environment that reaches it."""

    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(key=AWS_KEY_ID, secret=AWS_SECRET, endpoint_url=self.endpoint,
                                 use_listings_cache=False)  # fmt: skip


@pytest.fixture(scope="module")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """`moto.server` in its own process group, stopped with the module."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("s3") / "moto.log", "ab")  # noqa: SIM115 (the server keeps it)
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    store = ObjectStore(f"http://127.0.0.1:{port}")
    try:
        wait_until(lambda: http_ok(f"{store.endpoint}/moto-api/"), "the S3 server start")
        yield store
    finally:
        kill_group(process.pid)
        process.wait(timeout=30)
