"""What the orchestration costs around a generation, measured end to end.

    python benchmarks/cli_latency.py [--runs 5] [--out benchmarks/results/cli_latency.json]

Figures, each the median of `--runs` runs, on the embedded model (256p, 5 frames, 2 steps, float32):
- `cli_no_server`: `cosmos-generate` wall time minus the generation's own total (the sidecar's
  `timings.total_s`), with no PREFECT_API_URL, as a user runs it: the call goes to the warm process
  (`flows.daemon`), which a first call (`first_call`, not in the median) started with its Prefect server.
- `cli_with_server`: the same with PREFECT_API_URL pointing at a running `prefect server start`.
- `cli_in_process`: the same as `cli_no_server` with COSMOS_KEEP_ALIVE_S=0: the command imports everything and
  starts a temporary Prefect server itself, every call (what every call cost before the warm process).
- `warm_handoff`: a triggered `generate` deployment served by a warm worker (the stack, `scripts/stack.py`):
  from the flow-run process's start (its Prefect `Running` state) to the warm worker's task run starting.
The CLI variants run in turn (A B C A B C ...) so that the machine's drift affects them alike. Timings are
noisy on a shared machine: the script records min, median and max; nothing here is a pass/fail test.
"""

import argparse
import json
import os
import shutil
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
FLAGS = ["--model_id", "embedded:tiny", "--resolution", "256p", "--num_output_frames", "5",
         "--num_steps", "2", "--device", "cpu", "--dtype", "float32", "--seed", "1"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def cli_overhead(env: dict[str, str], folder: Path, index: int) -> dict[str, float]:
    output = folder / f"run{index}.mp4"
    start = time.monotonic()
    done = subprocess.run(
        [str(BIN / "cosmos-generate"), *FLAGS, "--prompt", f"a red ball rolls to the left {index}",
         "--output_path", str(output)],
        env=env, cwd=folder, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    generation = json.loads(output.with_name(output.name + ".json").read_text())["timings"]["total_s"]
    return {"wall_s": wall, "generation_s": generation, "overhead_s": wall - generation}


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def measure_cli(runs: int, folder: Path) -> dict:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_API_URL", "COSMOS_"))
    }
    runtime = folder / "runtime"  # its own warm processes, stopped at the end
    runtime.mkdir(mode=0o700)
    env |= {"COSMOS_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "XDG_RUNTIME_DIR": str(runtime),
            "COSMOS_ARTIFACT_ROOT": str(folder / "art"), "PREFECT_HOME": str(folder / "prefect")}  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--port", str(port), "--no-services"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health")
        variants = {
            "cli_no_server": env,
            "cli_with_server": env | {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"},
            "cli_in_process": env | {"COSMOS_KEEP_ALIVE_S": "0"},
        }
        # The first calls: the temporary server creates its database; each warm process starts.
        first = {
            name: cli_overhead(variant, folder, -1 - n) for n, (name, variant) in enumerate(variants.items())
        }
        results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        for index in range(runs):
            for n, (name, variant) in enumerate(variants.items()):
                results[name].append(cli_overhead(variant, folder, len(variants) * index + n))
    finally:
        subprocess.run([str(BIN / "cosmos-warm"), "stop"], env=env, capture_output=True, timeout=60)
        server.terminate()
        server.wait(timeout=30)
    return {
        name: {
            "first_call": first[name],
            "runs": values,
            **{key: summary([v[key] for v in values]) for key in ("overhead_s", "wall_s")},
        }
        for name, values in results.items()
    }


def measure_warm(runs: int, folder: Path) -> dict:
    """The stack with one warm worker; `runs` triggered generations, each timed from its flow-run process's
    Running state to its warm task run's Running state (both recorded by the Prefect server)."""
    sys.path.insert(0, str(REPO))
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    prefect_port, mlflow_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "COSMOS_"))}
    outputs = str(folder / "outputs")
    env |= {
        "COSMOS_OUTPUT_DIR": outputs,
        "COSMOS_POLICY__OUTPUT_ROOT": outputs,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    stack = [sys.executable, str(REPO / "scripts" / "stack.py"), "--dir", str(folder / "stack"),
             "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port),
             "--gpus", "1"]  # fmt: skip
    subprocess.run([*stack, "up"], env=env, check=True, capture_output=True, timeout=600)
    gaps = []
    try:
        api = f"http://127.0.0.1:{prefect_port}/api"
        with temporary_settings(updates={PREFECT_API_URL: api}):
            for index in range(runs + 1):  # the first loads the model on the worker: a warm-up
                parameters = {
                    "input_path": str(REPO / "assets" / "text2world.json"),
                    "profile": "tiny",
                    "overrides": {
                        "resolution": "256p",
                        "num_output_frames": 5,
                        "num_steps": 2,
                        "name": f"warm{index}",
                        "seed": index,
                    },  # fmt: skip
                }
                flow_run = run_deployment("generate/generate", parameters=parameters, timeout=600)
                with get_client(sync_client=True) as client:
                    states = client.read_flow_run_states(flow_run.id)
                    started = next(state.timestamp for state in states if state.type.value == "RUNNING")
                    [warm] = client.read_task_runs(
                        task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[f"warm-warm{index}"]))
                    )
                    warm_states = client.read_task_run_states(warm.id)
                    generating = next(
                        state.timestamp for state in warm_states if state.type.value == "RUNNING"
                    )
                if index:
                    gaps.append((generating - started).total_seconds())
    finally:
        subprocess.run([*stack, "down"], env=env, capture_output=True, timeout=120)
    return {"handoff_s": summary(gaps), "runs": gaps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cli_latency.json")
    parser.add_argument("--skip-warm", action="store_true", help="only the command-line figures")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="cosmos-latency-"))
    try:
        result = {"machine": f"{os.cpu_count()} cores", "flags": FLAGS, **measure_cli(args.runs, folder)}
        if not args.skip_warm:
            result["warm_handoff"] = measure_warm(args.runs, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    shown = {
        name: result[name]["overhead_s"] for name in ("cli_no_server", "cli_with_server", "cli_in_process")
    }
    if "warm_handoff" in result:
        shown["warm_handoff"] = result["warm_handoff"]["handoff_s"]
    for name, figures in shown.items():
        print(
            f"{name}: median {figures['median']:.2f} s (min {figures['min']:.2f}, max {figures['max']:.2f})"
        )


if __name__ == "__main__":
    main()
