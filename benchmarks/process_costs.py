"""What each kind of process the stack and the tests start costs in CPU seconds, its own and its children's.

    python benchmarks/process_costs.py [--runs 3] [--out benchmarks/results/process_costs.json]

`make test` is CPU-bound on two cores (README "Tests"), so these figures, not wall times, say where its
time goes. Each figure is the median of `--runs` fresh processes (user + system seconds, from the kernel's
accounting of the reaped child):
- `flow_run_imports`: what a flow-run process imports before it runs the `generate` flow;
- `gx_import`: what GX's shared process imports (`tasks.gx_process`; once per user and host);
- `warm_worker_imports`: what a warm worker imports before it serves (`tasks.warm`, the model code);
- `prefect_server_new_db`: `prefect server start` on a new database until `/api/health` answers (its imports
  and the database migrations), then `prefect_server_idle_per_min` with nothing connected, and
  `prefect_server_migrated_db`: the same server started again on the database it migrated (what the tests'
  servers start on: `tests/conftest.py`'s `migrated_prefect_db`).
Nothing here is a pass/fail test; the machine's other load shows as spread (min, median, max).
"""

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMPORTS = {
    "flow_run_imports": "import prefect.engine, flows.generate",
    "gx_import": "import great_expectations",
    "warm_worker_imports": "import tasks.warm; from cosmos_pipeline.loading import import_pipeline_code; "
    "import_pipeline_code()",
}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def import_cpu(statement: str) -> float:
    before = children_cpu()
    subprocess.run([sys.executable, "-c", statement], cwd=REPO, check=True, capture_output=True)
    return children_cpu() - before


def group_cpu(pid: int) -> float:
    """CPU seconds of every live process in process group `pid` (the server and its uvicorn child)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pid:  # its process group
                total += int(fields[11]) + int(fields[12])
    return total / tick


def start_server(home: str) -> tuple[subprocess.Popen, float]:
    """`prefect server start` on `home`'s database; the server and its CPU once `/api/health` answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                return server, group_cpu(server.pid)
        except OSError:
            if server.poll() is not None:
                raise RuntimeError("the Prefect server exited") from None
            time.sleep(0.2)


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, 15)
    server.wait(timeout=60)


def prefect_server(idle_s: float) -> tuple[float, float, float]:
    """CPU to start a Prefect server on a new database, its idle CPU per minute, and CPU to start it again
    on the database the first start migrated."""
    with tempfile.TemporaryDirectory() as home:
        server, started = start_server(home)
        try:
            time.sleep(idle_s)
            idle = (group_cpu(server.pid) - started) * 60 / idle_s
        finally:
            stop_server(server)
        server, again = start_server(home)
        stop_server(server)
    return started, idle, again


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=30.0, help="how long to watch the idle server")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "process_costs.json")
    args = parser.parse_args()
    results: dict[str, object] = {"machine": f"{os.cpu_count()} cores", "runs": args.runs}
    for name, statement in IMPORTS.items():
        results[name] = summary([import_cpu(statement) for _ in range(args.runs)])
        print(f"{name:<28} {results[name]['median']:6.2f} CPU-s (median of {args.runs})", flush=True)
    servers = [prefect_server(args.idle_s) for _ in range(args.runs)]
    results["prefect_server_new_db"] = summary([start for start, _, _ in servers])
    results["prefect_server_idle_per_min"] = summary([idle for _, idle, _ in servers])
    results["prefect_server_migrated_db"] = summary([again for _, _, again in servers])
    for name in ("prefect_server_new_db", "prefect_server_idle_per_min", "prefect_server_migrated_db"):
        print(f"{name:<28} {results[name]['median']:6.2f} CPU-s (median of {args.runs})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
