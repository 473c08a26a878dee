"""The command line's warm process (`flows.daemon`), on real `cosmos-generate` processes: later calls reuse
it (same process, nothing reloaded) and each is still its own flow run and MLflow run with the same pixels as
a call that does everything itself; bad input starts nothing; Ctrl-C and a killed caller stop the run as
in-process; a call while it is busy runs in its own process; it ends after its keep-alive, leaving nothing.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cosmos_pipeline.media import read_video
from flows import cli
from tasks import gx_process
from tests.conftest import REPO, TINY_ARGS, wait_until
from tests.flows.test_interrupts import SLOW, helpers_of, left_alive

SCRIPT = [sys.executable, str(REPO / "scripts" / "diffusers_inference.py")]
FAST = [*TINY_ARGS, "--num_output_frames", "5", "--seed", "3"]


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory, prefect_api: str, mlflow_store: dict) -> dict:
    """One folder and environment for the module's calls (so they share one warm process), its own runtime
    folder (so it meets no other warm process); at the end, no warm process may be left."""
    folder = tmp_path_factory.mktemp("warm")
    runtime = tmp_path_factory.mktemp("runtime")
    runtime.chmod(0o700)
    env = os.environ | {
        "XDG_RUNTIME_DIR": str(runtime),
        "COSMOS_KEEP_ALIVE_S": "60",
        "COSMOS_TRACKING_URI": mlflow_store["tracking_uri"],
        "COSMOS_ARTIFACT_ROOT": mlflow_store["artifact_root"],
        "COSMOS_EXPERIMENT": "test-warm",
        "PYTHONUNBUFFERED": "1",
    }
    yield {"folder": folder, "runtime": runtime / f"cosmos-warm-{os.getuid()}", "env": env}
    warm = str(Path(sys.executable).parent / "cosmos-warm")
    subprocess.run([warm, "stop"], env=env, timeout=60)

    def none_left() -> bool:  # GX's shared process included
        status = subprocess.run([warm, "status"], env=env, capture_output=True, text=True)
        return status.stdout.strip() == "no warm process"

    wait_until(none_left, "every warm process ending", timeout=30)  # they usually are gone at once


def call(warm: dict, *args: str, keep_alive: str = "60") -> subprocess.CompletedProcess:
    env = warm["env"] | {"COSMOS_KEEP_ALIVE_S": keep_alive}
    return subprocess.run(
        [*SCRIPT, *args], env=env, cwd=warm["folder"], capture_output=True, text=True, timeout=300
    )


def warm_pids(warm: dict) -> list[int]:
    return [json.loads(path.read_text())["pid"] for path in warm["runtime"].glob("*.json")]


def killed_runs(mlflow_client) -> int:
    """Interrupted runs of the experiment, once none is running (a killed caller's run takes a moment)."""
    experiment = mlflow_client.get_experiment_by_name("test-warm")
    deadline = time.monotonic() + 60
    while True:
        runs = mlflow_client.search_runs([experiment.experiment_id])
        if time.monotonic() > deadline or all(run.info.status != "RUNNING" for run in runs):
            break
        time.sleep(0.5)
    return sum(run.info.status == "KILLED" and run.data.tags.get("error") == "interrupted" for run in runs)


def test_bad_input_starts_no_warm_process(warm: dict) -> None:
    done = call(warm, *FAST, "--prompt", "a robot", "--resolution", "1080p", "--output_path", "bad.mp4")
    assert done.returncode == 2 and "resolution" in done.stderr, done.stderr
    assert "warm process" not in done.stderr
    assert not warm_pids(warm)


def test_calls_share_one_warm_process_and_each_is_tracked_alike(
    warm: dict, mlflow_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = call(warm, *FAST, "--prompt", "a red ball rolls left", "--output_path", "first.mp4")
    assert first.returncode == 0, first.stderr
    assert "starting a warm process" in first.stderr
    [pid] = warm_pids(warm)
    second = call(warm, *FAST, "--prompt", "a red ball rolls left", "--output_path", "second.mp4")
    assert second.returncode == 0, second.stderr
    assert "starting a warm process" not in second.stderr
    assert warm_pids(warm) == [pid]
    assert "Finished in state Completed" in second.stderr  # Prefect's log reaches the caller's terminal
    assert "run " in second.stdout and "FINISHED" in second.stdout  # and so does the command's own output

    experiment = mlflow_client.get_experiment_by_name("test-warm")
    runs = mlflow_client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    assert len({run.data.tags["prefect.flow_run_id"] for run in runs}) == 2  # a flow run each
    assert runs[1].data.metrics["pipeline_loaded"] == 0  # the second call loaded nothing

    # The same call done in-process (keep-alive 0) gives the same pixels.
    here = tmp_path / "here.mp4"
    for key in ("COSMOS_TRACKING_URI", "COSMOS_ARTIFACT_ROOT"):
        monkeypatch.setenv(key, warm["env"][key])
    monkeypatch.setenv("COSMOS_EXPERIMENT", "test-warm-here")
    code = cli.run([*FAST, "--prompt", "a red ball rolls left", "--output_path", str(here)])
    assert code == 0
    warm_frames = read_video(warm["folder"] / "second.mp4")
    assert np.array_equal(read_video(here), warm_frames)


def test_ctrl_c_and_a_killed_caller_stop_the_run_and_a_busy_one_runs_here(warm: dict, mlflow_client) -> None:
    [pid] = warm_pids(warm)
    env = warm["env"]
    for signum, code in ((signal.SIGINT, 130), (signal.SIGKILL, -9)):
        prompt = f"a slow robot stopped by {signal.Signals(signum).name}"  # else the second resumes the first
        slow = [*SCRIPT, *TINY_ARGS, *SLOW, "--prompt", prompt, "--output_path", "slow.mp4"]
        process = subprocess.Popen(
            slow, env=env, cwd=warm["folder"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        seen = []
        assert process.stderr is not None
        for line in process.stderr:
            seen.append(line)
            if "step " in line and "/40" in line:
                break
        else:
            pytest.fail("the generation never started:\n" + "".join(seen))
        if signum == signal.SIGINT:  # meanwhile another call, from this process: busy, so it runs here
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(warm["folder"])  # the same directory and environment: the same warm process
                for key in set(os.environ) - set(env):
                    patch.delenv(key)
                for key, value in env.items():
                    patch.setenv(key, value)
                assert cli.run([*FAST, "--prompt", "a busy day", "--output_path", "busy.mp4"]) == 0
            assert (warm["folder"] / "busy.mp4").is_file()
        process.send_signal(signum)
        _, rest = process.communicate(timeout=120)
        err = "".join(seen) + rest
        assert process.returncode == code, err
        if signum == signal.SIGINT:
            assert "Traceback" not in err, err
            assert err.rstrip().splitlines()[-1].startswith("interrupted (SIGINT)")
        assert killed_runs(mlflow_client) == (1 if signum == signal.SIGINT else 2)
        assert not (warm["folder"] / "slow.mp4").exists()
        assert not list(warm["folder"].glob(".*tmp*"))
    assert warm_pids(warm) == [pid]  # the warm process serves on


def test_it_ends_after_its_keep_alive_leaving_nothing(warm: dict) -> None:
    [pid] = warm_pids(warm)
    # GX's shared process, which it started, keeps its own keep-alive (the fixture stops it).
    helpers = helpers_of(pid)
    done = call(warm, *FAST, "--prompt", "the last call", "--output_path", "last.mp4", keep_alive="1")
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 30
    assert not left_alive({pid}, deadline)
    # multiprocessing's resource tracker ends once it sees its parent gone; any server it started, too
    assert not left_alive(helpers, deadline)
    assert not set(warm["runtime"].glob("*.sock")) - set(gx_process.running(warm["runtime"]))
    assert not warm_pids(warm)


def test_a_malformed_line_from_the_caller_is_skipped_and_a_gone_caller_still_stops_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-process: the watcher forwards the caller's signals; lines that name none (not JSON, no `signal`,
    not a signal) are skipped, and when the caller goes, the call still gets SIGTERM."""
    import socket
    import threading

    from flows import daemon

    sent: list[int] = []
    monkeypatch.setattr(daemon.signal, "pthread_kill", lambda ident, number: sent.append(number))
    state = daemon._State()
    state.running = True
    ours, callers = socket.socketpair()
    watcher = threading.Thread(target=daemon._watch, args=(ours, state))
    watcher.start()
    for line in (b"not json\n", b'{"other": 1}\n', b'{"signal": "x"}\n', b'{"signal": 999}\n', b"[]\n",
                 b'{"signal": 2}\n'):  # fmt: skip
        callers.sendall(line)
    callers.close()
    watcher.join(timeout=10)
    assert not watcher.is_alive() and sent == [signal.SIGINT, signal.SIGTERM]
