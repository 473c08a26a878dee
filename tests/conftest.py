"""Shared fixtures: the embedded model's cache, a real Prefect API, a real MLflow SQLite store.

Prefect reads its settings when imported, so its home and telemetry are set here, before any
test module imports it. The Prefect server (`prefect_test_harness`: a real API server in a
subprocess, on a temporary SQLite database) and the MLflow store start once per session (once per
worker process under `make test`); each test gets its own MLflow experiment and output folder.
Every Prefect server the tests start on a new database starts on a copy of one that Prefect's own
`prefect server database upgrade` migrated once for the run (`migrated_prefect_db`).
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

# A Prefect home of this process's own (with `make test`'s parallel workers, one each): the temporary
# servers of the commands the tests start keep their database there.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests never write to a developer's store
for key in [key for key in os.environ if key.startswith("COSMOS_") and key != "COSMOS_CACHE_DIR"]:
    del os.environ[key]
# Commands that tests start do everything in their own process; tests/flows/test_daemon.py turns the warm
# process on for the commands it starts.
os.environ["COSMOS_KEEP_ALIVE_S"] = "0"
# The suite runs many torch processes at once on a few cores. OpenMP's threads (torch's CPU kernels) spin
# between parallel regions by default, burning the cores that the other processes wait for: sleeping
# instead cut a generation-heavy part of the suite by about a quarter, in CPU and in wall time
# (`benchmarks/omp_wait_policy.sh`; benchmarks/RESULTS.md).
# Set before torch is imported (libgomp reads it when loaded); every process the tests start inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Run as a background job (`make test &`), pytest inherits SIGINT ignored, and so would every process the
# tests start: Ctrl-C tests and Prefect workers (which stop on SIGTERM by sending themselves SIGINT) would
# hang. Python's own handler here means the processes they start begin with the default.
signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
PREFECT_DB = "TEST_PREFECT_DB_FOLDER"  # where `configure_run` migrates the run's Prefect database
ASSETS = REPO / "assets"
# Flags for a generation that takes about a second on a 2-core CPU with the embedded model.
TINY_FLAGS: dict[str, Any] = {
    "model_id": "embedded:tiny",
    "height": 64,
    "width": 112,
    "num_output_frames": 9,
    "num_steps": 2,
    "device": "cpu",
}
# The same as command-line flags, frame count left to each test.
TINY_ARGS = [f"--{key}={value}" for key, value in TINY_FLAGS.items() if key != "num_output_frames"]


# `make test` runs the suite in two worker processes (pytest-xdist, `--dist loadfile`: a file's tests share
# its module fixtures, so they stay together). The files that take longest start first, so that neither
# worker is left with a long one at the end; the rest keep their order. The two stacks do not run together:
# xdist hands a worker its next file when it has two tests left, and the second worker takes the command-line
# files (about 130 s) one by one, so test_hosts goes to the first worker as test_stack ends. Started at once,
# their waits coincided and both cores idled; overlapping, each ran slower (a dozen processes each on two
# cores). test_expectations, which mostly waits, runs while the other worker works, not last.
LONGEST_FIRST = [
    "production/test_stack.py",
    "flows/test_interrupts.py",
    "flows/test_cli.py",
    "flows/test_daemon.py",
    "production/test_hosts.py",
    "production/test_tracking.py",
    "cosmos_pipeline/test_native.py",
    "tasks/test_expectations.py",
]


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (a worker inherits what it sets)
        configure_run(config)
    # The commands a test starts make their temporary Prefect server's database in this process's home.
    threading.Thread(target=migrated_prefect_db, args=(Path(os.environ["PREFECT_HOME"]) / "prefect.db",),
                     daemon=True).start()  # fmt: skip


def configure_run(config: pytest.Config) -> None:
    # One embedded-model cache for the run, shared by the workers (each would build its own).
    if "COSMOS_CACHE_DIR" not in os.environ:
        os.environ["COSMOS_CACHE_DIR"] = tempfile.mkdtemp(prefix="cosmos-cache-")
        config.add_cleanup(lambda: shutil.rmtree(os.environ.pop("COSMOS_CACHE_DIR"), ignore_errors=True))
    # A runtime folder of the run's own: the processes it starts share one GX process (`tasks.gx_process`),
    # never a developer's, and it ends with the run.
    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="cosmos-run-")
    config.add_cleanup(end_runtime_dir)
    # A Prefect database migrated once, by Prefect's own command, while the workers start: each server a test
    # starts on a new SQLite database (the test harness's, the several-hosts stack's, commands' temporary
    # ones) gets a copy instead of migrating again (~10 CPU-s each; `benchmarks/process_costs.py`).
    folder = Path(tempfile.mkdtemp(prefix="prefect-db-"))
    os.environ[PREFECT_DB] = str(folder)
    script = '"$0" server database upgrade -y >log 2>&1 && mv home/prefect.db prefect.db || touch failed'
    migrate = subprocess.Popen(
        ["sh", "-c", script, str(Path(sys.executable).parent / "prefect")],
        cwd=folder,
        env=os.environ | {"PREFECT_HOME": str(folder / "home")},
    )
    config.add_cleanup(lambda: (migrate.kill(), migrate.wait(), shutil.rmtree(folder, ignore_errors=True)))


def migrated_prefect_db(destination: Path) -> None:
    """A copy of the run's migrated Prefect database at `destination`, unless a server made one there."""
    folder = Path(os.environ[PREFECT_DB])
    deadline = time.monotonic() + 300
    while not (folder / "prefect.db").exists():
        if (folder / "failed").exists() or time.monotonic() > deadline:
            log = folder / "log"
            raise RuntimeError(f"no migrated Prefect database: {log.read_text() if log.exists() else ''}")
        time.sleep(0.2)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f"{destination.name}.{os.getpid()}.partial")
    shutil.copyfile(folder / "prefect.db", partial)
    try:
        os.link(partial, destination)  # never over a database a server already uses
    except FileExistsError:
        pass
    finally:
        partial.unlink()


def wait_until(check, what: str, timeout: float = 120) -> None:
    """Poll `check` until it is true; a hang guard, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.5)


def end_runtime_dir() -> None:
    from tasks import gx_process

    gx_process.stop()
    shutil.rmtree(os.environ.pop("XDG_RUNTIME_DIR"), ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.relative_to(REPO / "tests").as_posix()
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, and among the rest, the order is unchanged


@pytest.fixture(scope="session")
def embedded_cache() -> Path:
    """Where the embedded model is built, once a run (about 5 s a revision): `pytest_configure`'s folder."""
    return Path(os.environ["COSMOS_CACHE_DIR"])


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API server for the session; flows run in this process report to it."""
    from prefect.testing import utilities

    def migrated_folder() -> str:  # the harness's database, `prefect-test.db` in the folder it makes
        folder = tempfile.mkdtemp()
        migrated_prefect_db(Path(folder) / "prefect-test.db")
        return folder

    with contextlib.ExitStack() as started:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(utilities, "mkdtemp", migrated_folder)
            started.enter_context(utilities.prefect_test_harness(server_startup_timeout=120))
        from prefect.settings import PREFECT_API_URL

        # In the environment too: a command run in-process (or a process a test starts) uses this server
        # instead of starting a temporary one (seconds each); a test of the temporary server removes it.
        url = PREFECT_API_URL.value()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PREFECT_API_URL", url)
            yield url


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One SQLite store for the session (its schema migration costs seconds); experiments isolate tests."""
    root = tmp_path_factory.mktemp("mlflow")
    return {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "artifact_root": str(root / "mlartifacts")}


@pytest.fixture
def tracked(mlflow_store: dict[str, str], request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Explicit settings for one test: the session store, an experiment of its own, a temp output folder."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:80]
    return {
        **mlflow_store,
        "experiment": f"test-{name}",
        "eval_experiment": f"test-eval-{name}",
        "output_dir": str(tmp_path / "outputs"),
    }


@pytest.fixture
def mlflow_client(mlflow_store: dict[str, str]):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_store["tracking_uri"])


@pytest.fixture(scope="session")
def tiny_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LoRA adapter for the embedded transformer, saved in diffusers' format."""
    from diffusers import Cosmos2_5_PredictBasePipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from cosmos_pipeline import tiny

    path = tmp_path_factory.mktemp("lora")
    transformer = tiny.build_transformer(tiny.REVISION_SEEDS[tiny.POST_TRAINED])
    # Random (not zero) B matrices, so the adapter changes the output from the first step.
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False)
    transformer.add_adapter(config)
    Cosmos2_5_PredictBasePipeline.save_lora_weights(
        path, transformer_lora_layers=get_peft_model_state_dict(transformer)
    )
    return path
