"""GX's shared process: one per user, host and code, started by whichever caller comes first, serving every
process after it, replaced when killed, gone after its keep-alive or on `cosmos-warm stop`."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.flows.test_interrupts import alive

# A caller: validates a table with a failing row against the frame suite, prints the shared process's pid.
CALLER = textwrap.dedent(
    """
    import pandas as pd
    from tasks import expectations

    table = pd.DataFrame({"row": [0, 1], "mean_luma": [120.0, 250.0], "std_luma": [30.0, 30.0],
                          "clip_low": 0.0, "clip_high": 0.0, "diff_prev": 1.0})
    result = expectations.run_suite(table, "frames").result()
    print(sorted({row for failure in expectations.failures(result) for row in failure.rows}))
    print(expectations.gx_process.submit("pid").result())
    """
)


def caller(env: dict[str, str]) -> tuple[str, int]:
    command = [sys.executable, "-c", CALLER]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows, pid = done.stdout.split("\n")[:2]
    assert "validating in this process" not in done.stderr, done.stderr
    return rows, int(pid)


def socket_of(runtime: Path) -> list[Path]:
    return sorted(runtime.glob("cosmos-warm-*/gx-*.sock"))


@pytest.fixture
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runtime")  # short: a Unix socket's path has at most 107 bytes
    folder.chmod(0o700)
    return folder


def test_callers_share_one_process_that_is_replaced_when_killed_and_ends_after_its_keep_alive(runtime):
    env = os.environ | {"XDG_RUNTIME_DIR": str(runtime), "COSMOS_GX_KEEP_ALIVE_S": "600"}
    # Two callers at once start one process between them; a third finds it.
    both = [subprocess.Popen([sys.executable, "-c", CALLER], env=env, stdout=subprocess.PIPE, text=True)]
    both.append(subprocess.Popen([sys.executable, "-c", CALLER], env=env, stdout=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=120)[0].split("\n")[:2] for process in both]
    assert all(process.returncode == 0 for process in both)
    assert [rows for rows, _ in outputs] == ["[1]", "[1]"]  # the row GX failed, for each
    [first] = {int(pid) for _, pid in outputs}
    assert caller(env) == ("[1]", first)
    assert os.getsid(first) == first  # a session of its own: a terminal's Ctrl-C never reaches it
    [path] = socket_of(runtime)

    os.kill(first, signal.SIGKILL)  # killed outright: its socket stays behind
    deadline = time.monotonic() + 10
    while alive(first) and time.monotonic() < deadline:
        time.sleep(0.1)
    rows, second = caller(env | {"COSMOS_GX_KEEP_ALIVE_S": "3"})  # the one it starts stays 3 s
    assert rows == "[1]" and second != first and socket_of(runtime) == [path]

    # With no call for its keep-alive, it ends and removes its socket.
    deadline = time.monotonic() + 60
    while alive(second) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(second) and not socket_of(runtime)


def test_cosmos_warm_stop_ends_it_and_keep_alive_0_validates_in_the_caller(runtime):
    env = os.environ | {"XDG_RUNTIME_DIR": str(runtime), "COSMOS_GX_KEEP_ALIVE_S": "600"}
    _, pid = caller(env)
    warm = str(Path(sys.executable).parent / "cosmos-warm")
    status = subprocess.run([warm, "status"], env=env, capture_output=True, text=True, cwd=REPO)
    assert "GX's shared process" in status.stdout
    stopped = subprocess.run([warm, "stop"], env=env, capture_output=True, text=True, cwd=REPO)
    assert "stopped GX's shared process (1 of 1 answered)" in stopped.stdout, stopped
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid) and not socket_of(runtime)

    rows, _ = caller(env | {"COSMOS_GX_KEEP_ALIVE_S": "0"})
    assert rows == "[1]" and not socket_of(runtime)


def test_a_caller_that_cannot_reach_one_validates_itself_and_says_why_once(runtime, monkeypatch, caplog):
    from tasks import gx_process

    monkeypatch.setattr(gx_process, "_unavailable", None)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime / ("x" * 100)))  # too long for a socket's path
    (runtime / ("x" * 100)).mkdir(mode=0o700)
    assert [gx_process.submit("pid").result() for _ in range(2)] == [os.getpid()] * 2  # in this process
    [warning] = [record.getMessage() for record in caplog.records if record.name == gx_process.__name__]
    assert "its socket's path would be too long" in warning and "set XDG_RUNTIME_DIR shorter" in warning
