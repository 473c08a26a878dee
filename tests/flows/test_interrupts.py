"""Ctrl-C and SIGTERM on a real `cosmos-generate` process: mid-generation and during start-up, the call ends
with one line and 130/143, leaves no output and no server behind, marks its MLflow run KILLED
(`interrupted`), and the next call runs at once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ASSETS, REPO, TINY_ARGS

SCRIPT = [sys.executable, str(REPO / "scripts" / "diffusers_inference.py")]
# Long enough to be stopped in the middle: about half a second a step on two CPU cores.
SLOW = ["--height", "256", "--width", "448", "--num_output_frames", "29", "--num_steps", "40"]


def environment(tracked: dict) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}  # its own server
    return env | {
        "COSMOS_TRACKING_URI": tracked["tracking_uri"],
        "COSMOS_ARTIFACT_ROOT": tracked["artifact_root"],
        "COSMOS_EXPERIMENT": tracked["experiment"],
        "PYTHONUNBUFFERED": "1",
    }


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (the temporary server, and GX's shared process where this call
    started it)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(proc.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def helpers_of(pid: int) -> set[int]:
    """`descendants(pid)` but GX's shared process, which outlives a call by design: it serves the next calls
    (tests/tasks/test_expectations.py)."""
    return {child for child in descendants(pid) if b"tasks.gx_process" not in command_line(child)}


def left_alive(pids: set[int], deadline: float) -> list[bytes]:
    """The command lines of those of `pids` still alive at `deadline` (time.monotonic()), or as soon as none
    is: a hang guard, they usually are gone at once."""
    while [pid for pid in pids if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    return [command_line(pid) for pid in pids if alive(pid)]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stopped_mid_generation_ends_cleanly_and_the_next_run_starts(
    signum: int, code: int, tmp_path: Path, tracked: dict, mlflow_client
) -> None:
    output = tmp_path / "stopped.mp4"
    args = [*TINY_ARGS, *SLOW, "--input_path", str(ASSETS / "text2world.json"), "--output_path", str(output)]
    process = subprocess.Popen(
        [*SCRIPT, *args], env=environment(tracked), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tmp_path,
    )  # fmt: skip
    seen = []
    assert process.stderr is not None
    for line in process.stderr:  # Prefect's run log: wait for the denoising steps
        seen.append(line)
        if "step " in line and "/40" in line:
            break
    else:
        pytest.fail("the generation never started:\n" + "".join(seen))
    helpers = helpers_of(process.pid)
    process.send_signal(signum)
    _, rest = process.communicate(timeout=120)
    err = "".join(seen) + rest

    assert process.returncode == code, err
    assert "Traceback" not in err, err
    assert err.rstrip().splitlines()[-1].startswith(f"interrupted ({signal.Signals(signum).name})")
    assert err.count("interrupted (") == 1
    assert not output.exists() and not list(tmp_path.glob(".*tmp*"))  # nothing, not even half
    assert not (tmp_path / "mlflow.db").exists()  # nor MLflow's default store in the directory
    assert not left_alive(helpers, time.monotonic() + 30)  # the temporary server and the rest: gone
    experiment = mlflow_client.get_experiment_by_name(tracked["experiment"])
    [run] = mlflow_client.search_runs([experiment.experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["error"] == "interrupted"
    if signum != signal.SIGINT:
        return
    again = subprocess.run(
        [*SCRIPT, *TINY_ARGS, "--input_path", str(ASSETS / "text2world.json"), "--num_output_frames", "5",
         "--output_path", str(output)],
        env=environment(tracked), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert output.is_file()


def test_stopped_while_starting_is_one_line(tmp_path: Path, tracked: dict) -> None:
    process = subprocess.Popen(
        [*SCRIPT, *TINY_ARGS, "--prompt", "a robot", "--output_path", str(tmp_path / "a.mp4")],
        env=environment(tracked), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(1.0)  # importing
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted (SIGINT)")
