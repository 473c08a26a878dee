"""A temporary Prefect API server for one command-line call, when no PREFECT_API_URL points at one.

Prefect's own temporary server starts inside the first flow call, in the terminal's process group: it
costs its start-up time after everything else, and Ctrl-C kills it with the run, so the run can no
longer record how it ended. This one is Prefect's same server command (the API app on uvicorn, UI off,
its SQLite database under PREFECT_HOME), started first thing in a session of its own: it starts while
the command validates its input and imports the model, Ctrl-C reaches only the command, which records
the interruption and then stops it. It also ends with its parent if the parent is killed outright.
"""

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

STARTUP_TIMEOUT_S = 120.0  # a first start creates the database; a small machine takes a while
STARTUP_FAILED, RESTARTS = 3, 3  # uvicorn's exit code when the app's start-up fails; tries again
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux), so no server outlives a killed CLI."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _bound_socket() -> socket.socket:
    """A loopback port held from now on: a port merely found free could be taken by another command's
    server before this one binds it (it binds only after its start-up), and the health check would then
    answer for the wrong server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.set_inheritable(True)
    return sock


class TemporaryServer:
    """Started at construction; `wait()` returns its API URL once healthy; `stop()` ends it."""

    def __init__(self) -> None:
        self.socket = _bound_socket()  # uvicorn serves on it (`--fd`), restarts included
        self.port = self.socket.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.restarts = 0
        # Its errors go to a file: a pipe nobody reads while it runs would block it once full.
        self.log = tempfile.TemporaryFile()
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        import importlib.util  # Prefect's location, without importing Prefect (seconds) here

        spec = importlib.util.find_spec("prefect")
        assert spec is not None and spec.origin is not None, "prefect is not installed"
        app_dir = str(Path(spec.origin).parent.parent)
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",  # what Prefect's own temporary server sets
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        command = [
            sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory",
            "prefect.server.api.server:create_app", "--fd", str(self.socket.fileno()),
            "--log-level", "error", "--lifespan", "on",
        ]  # fmt: skip
        return subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            pass_fds=(self.socket.fileno(),),
            start_new_session=True,  # Ctrl-C in the terminal reaches the command, not its server
            preexec_fn=_die_with_parent,
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait(self, timeout_s: float = STARTUP_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if self.process.poll() == STARTUP_FAILED and self.restarts < RESTARTS:
                # Another command's server was creating the same new database (as Prefect's own temporary
                # server does on this exit code, start again).
                self.restarts += 1
                time.sleep(0.5 * self.restarts)
                self.process = self._start()
                continue
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the temporary Prefect server exited ({self.process.returncode}): {self.errors()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the temporary Prefect server did not start within {timeout_s:.0f} s; start one with "
                    "`prefect server start` and set PREFECT_API_URL"
                )
            time.sleep(0.05)
        return self.api_url

    def errors(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.socket.close()
