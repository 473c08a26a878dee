"""Start, inspect and stop the production stack: on one GPU host, or servers on one and workers on many
(README "Production").

    python scripts/stack.py up [--gpus N] [--cold] [--host 127.0.0.1]   # or: make stack
    python scripts/stack.py up --host 0.0.0.0 --object-store s3://bucket/cosmos --servers-only
    python scripts/stack.py worker --host <server host> --object-store s3://bucket/cosmos  # each GPU host
    python scripts/stack.py status
    eval "$(python scripts/stack.py env)"     # PREFECT_API_URL, COSMOS_TRACKING_URI for this shell
    python scripts/stack.py down                                          # or: make stack-down

`up` runs exactly the commands the README lists, in order, each waiting for the previous to be
healthy: a Prefect server, an MLflow tracking server (SQLite + a local artifact folder unless
--backend-store-uri names e.g. PostgreSQL), the `cosmos-gpu` process work pool, `prefect deploy
--all`, the zombie-run automation, and per GPU one process worker (`--limit 1`) and one warm worker
(`cosmos-worker`, started as soon as the Prefect server answers: their imports take longest), both
pinned with CUDA_VISIBLE_DEVICES. Servers bind to loopback unless --host
says otherwise. It is idempotent: what already runs is kept. Each service is its own process group
with a pid file and a log under --dir (default .stack/); `down` stops them, workers first.

Hosts that share no disk share an object store (--object-store, a URI prefix): outputs go to
`<store>/outputs`, requests may read `<store>/inputs` (and the checkout's assets/), Prefect's results and
warm workers' parameters go through a `remote-file-system` block on `<store>/prefect` that `up` creates,
and the MLflow server keeps artifacts in `<store>/mlartifacts` (clients upload through it). `worker`
starts one host's workers against servers elsewhere. Credentials come from the AWS environment of each
process (AWS_ACCESS_KEY_ID..., AWS_ENDPOINT_URL for another S3 server); nothing records them.
"""

import argparse
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cosmos_pipeline.errors import InputError
from cosmos_pipeline.storage import URI, exists, location
from tasks.scrub import scrub

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "cosmos-gpu"
ZOMBIES = "cosmos: crash flow runs whose heartbeats stopped"
HEARTBEAT_S = 30  # flow-run heartbeats (Prefect's minimum); a run silent for ZOMBIE_AFTER_S is CRASHED
ZOMBIE_AFTER_S = 120
RESULTS_BLOCK = "cosmos-results"  # the remote-file-system block of --object-store
# MLflow's job runner (huey consumers, for its GenAI jobs) is not used here and costs a tenth of a core.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "worker", "down", "status", "env"])
    parser.add_argument("--dir", type=Path, default=REPO / ".stack", help="pid files, logs, server state")
    parser.add_argument("--host", default="127.0.0.1", help="where the servers listen (default: loopback)")
    parser.add_argument("--prefect-port", type=int, default=4200)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument(
        "--backend-store-uri",
        help="MLflow's store, e.g. postgresql+psycopg://mlflow@db/mlflow (default: "
        "MLFLOW_BACKEND_STORE_URI, else sqlite:///<dir>/mlflow.db); keep passwords in ~/.pgpass, PGPASSWORD "
        "or MLFLOW_BACKEND_STORE_URI, not here",
    )
    parser.add_argument("--artifacts-destination", help="MLflow's artifact root (default: <dir>/mlartifacts)")
    parser.add_argument("--gpus", default="auto", help="workers to start, one per GPU: a count, or auto")
    parser.add_argument(
        "--cold", action="store_true", help="no warm workers: generations run in the flow run"
    )
    parser.add_argument(
        "--object-store",
        type=object_store,
        help="URI prefix every host shares (s3://bucket/prefix): outputs, Prefect results, MLflow artifacts",
    )
    parser.add_argument(
        "--servers-only", action="store_true", help="up: no workers here (GPU hosts run `worker`)"
    )
    parser.add_argument(
        "--name", default=socket.gethostname(), help="this host's name for its workers (default: host name)"
    )
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for each service")
    return parser.parse_args(argv)


def object_store(value: str) -> URI:
    try:
        store = location(value.rstrip("/"))
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not isinstance(store, URI):
        raise argparse.ArgumentTypeError(f"{value} is not a URI; give the prefix as s3://bucket/prefix")
    return store


# ----------------------------------------------------------------------------- processes


def pid_file(args: argparse.Namespace, name: str) -> Path:
    return args.dir / "run" / f"{name}.pid"


def running(args: argparse.Namespace, name: str) -> int | None:
    """The pid of service `name` if it is alive."""
    try:
        pid = int(pid_file(args, name).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:  # an exited service nobody reaped (no init in a container) is a zombie: not running
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return pid
    return None if state == "Z" else pid


def spawn(args: argparse.Namespace, name: str, command: list[str], env: dict[str, str]) -> bool:
    """Start `command` in its own process group (so `down` stops all it started), logging to <dir>/logs;
    False if it already runs."""
    if running(args, name):
        print(f"  {name}: already running (pid {running(args, name)})")
        return False
    (args.dir / "logs").mkdir(parents=True, exist_ok=True)
    pid_file(args, name).parent.mkdir(parents=True, exist_ok=True)
    log = open(args.dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    pid_file(args, name).write_text(str(process.pid))
    print(f"  {name}: started (pid {process.pid}): {scrub(' '.join(command))}")
    return True


def stop(args: argparse.Namespace, names: list[str], grace_s: float = 10) -> None:
    """SIGTERM the services `names` together, then wait for them together; SIGKILL what outlives `grace_s`."""
    pids = {name: running(args, name) for name in names}
    for pid in pids.values():
        if pid is not None:
            with_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(running(args, name) for name, pid in pids.items() if pid):
        time.sleep(0.1)
    for name, pid in pids.items():
        if pid is not None:
            if running(args, name):
                with_group(pid, signal.SIGKILL)
            print(f"  {name}: stopped")
        pid_file(args, name).unlink(missing_ok=True)


def with_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the service's whole process group: its children too
    except ProcessLookupError:
        pass


def run(command: list[str], env: dict[str, str]) -> None:
    print(f"  $ {scrub(' '.join(command))}")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout}{done.stderr}")


def wait_for(args: argparse.Namespace, what: str, check, services: list[str]) -> None:
    """Until `check()` holds; stop at once, with the end of its log, if one of `services` exits."""
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if check():
            return
        for name in services:
            if running(args, name) is None:
                log = (args.dir / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
                sys.exit(
                    f"{what}: {name} exited. The end of {args.dir / 'logs' / name}.log:\n"
                    + "\n".join(log[-15:])
                )
        time.sleep(0.5)
    sys.exit(f"{what} not ready after {args.timeout:.0f} s; see the logs in {args.dir / 'logs'}")


def http_ok(url: str, body: dict | None = None) -> object | None:
    """The decoded JSON answer of `url` (POSTing `body`), or None when it does not answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read()
    except (urllib.error.URLError, OSError):
        return None
    try:
        return json.loads(text or b"null")
    except ValueError:
        return text


# ----------------------------------------------------------------------------- the stack


def client_host(args: argparse.Namespace) -> str:
    """Where processes on this host reach the servers (a wildcard bind is reached on loopback)."""
    return "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host


def urls(args: argparse.Namespace) -> tuple[str, str]:
    host = client_host(args)
    return f"http://{host}:{args.prefect_port}/api", f"http://{host}:{args.mlflow_port}"


def gpu_count(args: argparse.Namespace) -> int:
    return detected_gpus() if args.gpus == "auto" else int(args.gpus)


@functools.cache
def detected_gpus() -> int:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    done = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True)
    return len(done.stdout.split()) if done.returncode == 0 else 0


def environment(args: argparse.Namespace) -> dict[str, str]:
    """What every process of the stack shares: the Prefect API and home (result storage), the tracking."""
    prefect_api, tracking = urls(args)
    home = (args.dir / "prefect").resolve()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": prefect_api,
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "storage"),  # warm workers' parameters and results
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),
        "COSMOS_TRACKING_URI": tracking,
        "COSMOS_WARM_WORKERS": "0" if args.cold else "1",
    }
    env.setdefault("COSMOS_PROFILE", "production")  # also what prefect.yaml gives flow runs
    if args.object_store:
        env |= result_storage_env()
        # Where requests read and write, unless the operator's environment says otherwise.
        env.setdefault("COSMOS_OUTPUT_DIR", str(args.object_store / "outputs"))
        env.setdefault("COSMOS_POLICY__OUTPUT_ROOT", str(args.object_store / "outputs"))
        env.setdefault("COSMOS_POLICY__INPUT_ROOTS", json.dumps([args.object_store / "inputs", "assets"]))
    return env


def result_storage_env() -> dict[str, str]:
    """Prefect's results and warm workers' parameters in the store's block, for every process of each host."""
    block = f"remote-file-system/{RESULTS_BLOCK}"
    keys = ("PREFECT_DEFAULT_RESULT_STORAGE_BLOCK", "PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK")
    return dict.fromkeys(keys, block)


def zombie_automation() -> dict:
    """Prefect's documented zombie detection: a flow run whose heartbeats stop (its host died) is CRASHED."""
    return {
        "name": ZOMBIES,
        "trigger": {
            "type": "event",
            "posture": "Proactive",
            "after": ["prefect.flow-run.heartbeat"],
            "expect": [
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            ],
            "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
            "for_each": ["prefect.resource.id"],
            "threshold": 1,
            "within": ZOMBIE_AFTER_S,
        },
        "actions": [
            {
                "type": "change-flow-run-state",
                "state": "CRASHED",
                "message": f"no heartbeat for {ZOMBIE_AFTER_S} s: its worker or host died",
            }
        ],
    }


def ensure_zombie_automation(prefect_api: str) -> None:
    found = http_ok(f"{prefect_api}/automations/filter", {"automations": {"name": {"any_": [ZOMBIES]}}}) or []
    if found:
        return
    if http_ok(f"{prefect_api}/automations/", zombie_automation()) is None:
        sys.exit("could not create the zombie-run automation")


def check_object_store(store: URI) -> None:
    """The store's bucket answers with this process's credentials, or stop with what to do."""
    bucket = URI(f"{store.scheme}://{store.bucket}/")
    try:
        found = exists(bucket)
    except InputError as error:
        sys.exit(f"object store {store}: {error}")
    if not found:
        sys.exit(f"object store {store}: no bucket {store.bucket}; create it, or check AWS_ENDPOINT_URL")


def ensure_result_storage(store: URI, prefect_api: str) -> None:
    """The remote-file-system block every host's flow runs and warm workers keep results and parameters in:
    a basepath on the store and no credentials (each process reads its own)."""
    from prefect.filesystems import RemoteFileSystem
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        RemoteFileSystem(basepath=str(store / "prefect")).save(RESULTS_BLOCK, overwrite=True)
    print(f"  result storage: remote-file-system/{RESULTS_BLOCK} on {store / 'prefect'}")


def up(args: argparse.Namespace) -> None:
    env = environment(args)
    prefect_api, tracking = urls(args)
    backend = (
        args.backend_store_uri
        or os.environ.get("MLFLOW_BACKEND_STORE_URI")
        or f"sqlite:///{(args.dir / 'mlflow.db').resolve()}"
    )
    artifacts = args.artifacts_destination or str(
        args.object_store / "mlartifacts" if args.object_store else (args.dir / "mlartifacts").resolve()
    )
    if args.object_store:
        check_object_store(args.object_store)
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"stack in {args.dir}:")
    spawn(args, "prefect-server", [str(BIN / "prefect"), "server", "start", "--host", args.host,
                                   "--port", str(args.prefect_port)], env)  # fmt: skip
    # The store URI goes in the environment, not the command line: a database password stays out of `ps`.
    mlflow = [str(BIN / "mlflow"), "server", "--host", args.host, "--port", str(args.mlflow_port),
              "--artifacts-destination", artifacts, "--workers", "1"]  # fmt: skip
    spawn(args, "mlflow-server", mlflow, {**env, "MLFLOW_BACKEND_STORE_URI": backend, **MLFLOW_SERVER_ENV})
    wait_for(args, "Prefect server", lambda: http_ok(f"{prefect_api}/health") is not None, ["prefect-server"])
    warm = None if args.servers_only or args.cold else start_warm_workers(args, env)
    wait_for(args, "MLflow server", lambda: http_ok(f"{tracking}/health") is not None, ["mlflow-server"])

    run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process", "--overwrite"], env)
    run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)
    ensure_zombie_automation(prefect_api)
    if args.object_store:
        ensure_result_storage(args.object_store, prefect_api)
    if not args.servers_only:
        start_workers(args, env, warm)
    print(f"\nPrefect UI: {prefect_api.removesuffix('/api')}   MLflow UI: {tracking}")
    print(f'Use it from this shell: eval "$({sys.executable} {Path(__file__).relative_to(REPO)} env)"')


def worker(args: argparse.Namespace) -> None:
    """This host's workers against servers that run elsewhere (`up --servers-only` there)."""
    prefect_api, tracking = urls(args)
    for what, url in (("Prefect", f"{prefect_api}/health"), ("MLflow", f"{tracking}/health")):
        if http_ok(url) is None:
            sys.exit(f"the {what} server does not answer at {url}; start it (`up`) or check --host and ports")
    if args.object_store:
        check_object_store(args.object_store)
        from prefect.filesystems import RemoteFileSystem
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
            try:
                RemoteFileSystem.load(RESULTS_BLOCK)
            except ValueError:
                sys.exit(f"no result storage block {RESULTS_BLOCK}: run `up --object-store ...` first")
    print(f"workers of {args.name} in {args.dir}:")
    start_workers(args, environment(args))


def start_workers(args: argparse.Namespace, env: dict[str, str], warm: list[str] | None = None) -> None:
    """Per GPU a process worker (`--limit 1`) and, unless --cold, a warm worker, pinned to it; `warm`: the
    warm workers `start_warm_workers` started earlier (None: it runs here)."""
    prefect_api, _ = urls(args)
    if warm is None:
        warm = [] if args.cold else start_warm_workers(args, env)
    names = worker_names(args)
    for index, name in enumerate(names):
        command = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--limit", "1", "--name", name]
        spawn(args, f"worker-{index}", command, pinned(args, env, index))
    workers = [f"worker-{index}" for index in range(len(names))]
    wait_for(args, "process workers", lambda: online_workers(prefect_api, names) == len(names), workers)
    if warm:
        # The ones started now, by name: Prefect's task worker calls itself "<host>-<pid>". (A count was
        # fooled by a worker killed a moment before, still counted; one already running may be busy, and
        # a busy warm worker does not listen.)
        mine = {f"{socket.gethostname()}-{running(args, name)}" for name in warm}
        wait_for(args, "warm workers", lambda: mine <= listening(prefect_api), warm)


def start_warm_workers(args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    """One warm worker per GPU; they need only the Prefect server, and their imports take longest, so `up`
    starts them first. Returns those it started (not those already running), which `start_workers` awaits."""
    started = []
    for index in range(len(worker_names(args))):
        # `cosmos-worker` as a module of this checkout: the same code as the flow runs it serves (a task's
        # key hashes its source, so a worker from another checkout would never be handed work).
        command = [sys.executable, "-m", "tasks.warm"]
        if spawn(args, f"warm-{index}", command, pinned(args, env, index)):
            started.append(f"warm-{index}")
    return started


def worker_names(args: argparse.Namespace) -> list[str]:
    gpus = gpu_count(args)
    return [f"{args.name}-gpu{index}" for index in range(gpus)] if gpus else [f"{args.name}-cpu"]


def pinned(args: argparse.Namespace, env: dict[str, str], index: int) -> dict[str, str]:
    return {**env, "CUDA_VISIBLE_DEVICES": str(index)} if gpu_count(args) else env


def listening(prefect_api: str) -> set[str]:
    """The task workers connected to the server, by name."""
    found = http_ok(f"{prefect_api}/task_workers/filter", {}) or []
    return {worker.get("identifier") for worker in found if isinstance(worker, dict)}


def online_workers(prefect_api: str, names: list[str]) -> int:
    workers = http_ok(f"{prefect_api}/work_pools/{POOL}/workers/filter", {}) or []
    return sum(
        worker.get("status") == "ONLINE" and worker.get("name") in names
        for worker in workers
        if isinstance(worker, dict)
    )


def down(args: argparse.Namespace) -> None:
    """Warm workers first (each ends its generation at the next step), then the process workers, then the
    servers they report to; each tier stopped together."""
    names = (
        sorted(path.stem for path in (args.dir / "run").glob("*.pid")) if (args.dir / "run").is_dir() else []
    )
    for tier in ("warm-", "worker-", ("mlflow-server", "prefect-server")):
        stop(args, [name for name in names if name.startswith(tier)])


def status(args: argparse.Namespace) -> None:
    prefect_api, tracking = urls(args)
    names = (
        sorted(path.stem for path in (args.dir / "run").glob("*.pid")) if (args.dir / "run").is_dir() else []
    )
    for name in names:
        pid = running(args, name)
        print(f"  {name:<16} {'running, pid ' + str(pid) if pid else 'stopped'}")
    print(f"  Prefect {prefect_api}: {'up' if http_ok(prefect_api + '/health') is not None else 'down'}")
    print(f"  MLflow  {tracking}: {'up' if http_ok(tracking + '/health') is not None else 'down'}")


def main(argv: list[str] | None = None) -> None:
    # Started as a background job (`make stack &`), this process inherits SIGINT ignored, and so would every
    # service it starts; Prefect's workers stop gracefully on SIGTERM by sending themselves SIGINT, so they
    # would not stop at all. Python's own handler here means the services start with the default.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = parse_args(argv)
    if args.command == "up":
        up(args)
    elif args.command == "worker":
        worker(args)
    elif args.command == "down":
        down(args)
    elif args.command == "status":
        status(args)
    else:
        prefect_api, tracking = urls(args)
        print(f"export PREFECT_API_URL={prefect_api} COSMOS_TRACKING_URI={tracking}")
        if args.object_store:
            print("export " + " ".join(f"{key}={value}" for key, value in result_storage_env().items()))
        else:
            print(f"export PREFECT_RESULTS_LOCAL_STORAGE_PATH={(args.dir / 'prefect' / 'storage').resolve()}")


if __name__ == "__main__":
    main()
