"""One GX process per user and host, shared by every command, flow run and warm worker of that user there.

Importing GX costs ~5 s of CPU (`benchmarks/process_costs.py`). A helper process per caller paid it in every
flow run, command and warm worker; this process pays it once and stays `COSMOS_GX_KEEP_ALIVE_S` (default
600 s; 0 validates in the caller's own process instead) after its last table. It listens on a Unix socket in
the user's runtime folder (closed to others, `runtime_dir`), named for the code it runs (the interpreter,
GX's version, this file and `tasks/expectations.py`): after an edit or an upgrade callers start a new one,
and the old one ends after its keep-alive. It runs in a session of its own, so a terminal's Ctrl-C stops
the command and never the process that other commands share. If it cannot start, the caller validates
in-process and says why in a warning.

This module imports nothing heavy: the process starts with it alone and binds its socket before it imports
pandas and GX, so callers that arrive meanwhile queue instead of starting another.
"""

import contextlib
import functools
import hashlib
import importlib.metadata
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from tasks.runtime import hold_lock, runtime_dir

KEEP_ALIVE_S = 600.0
START_TIMEOUT_S = 60.0  # from starting it to its socket accepting: an interpreter and this module
MAX_SOCKET_PATH = 107  # bytes: Linux's limit for a Unix socket's path
CODE = [Path(__file__), Path(__file__).with_name("expectations.py")]

logger = logging.getLogger(__name__)
_CALLS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gx")


def keep_alive_s() -> float:
    return float(os.environ.get("COSMOS_GX_KEEP_ALIVE_S", KEEP_ALIVE_S))


@functools.cache
def _code_key() -> str:
    digest = hashlib.sha256(sys.executable.encode())
    digest.update(importlib.metadata.version("great_expectations").encode())
    for path in CODE:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def address() -> Path:
    """This code's socket: another interpreter, GX version or edit of the code gets another process."""
    path = runtime_dir() / f"gx-{_code_key()}.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise _Unavailable(f"its socket's path would be too long ({path}); set XDG_RUNTIME_DIR shorter")
    return path


# --- the callers' side ------------------------------------------------------------------------------------


def submit(function: str, *args: Any) -> "Future[Any]":
    """`tasks.expectations.<function>(*args)` in the shared process (in this one where that is off or cannot
    start), on a thread of this process: the caller goes on while GX works."""
    return _CALLS.submit(_call, function, args)


def start() -> "Future[Any]":
    """The shared process, started now if none runs (it imports GX while the caller does other work)."""
    return submit("ready")


class _Unavailable(OSError):
    """No shared process for this caller: its calls run in its own process from then on."""


_unavailable: str | None = None  # why, once a call found it so


def _call(function: str, args: tuple) -> Any:
    global _unavailable
    if keep_alive_s() > 0 and _unavailable is None:
        try:
            return _call_shared(function, args)
        except _Unavailable as error:
            _unavailable = str(error)
            logger.warning("GX's shared process: %s; validating in this process", error)
    return _run(function, args)


def _call_shared(function: str, args: tuple) -> Any:
    dropped: BaseException | None = None
    for _ in range(2):  # a process ending at its keep-alive may drop a call that arrived just then
        try:
            with _connect() as conn:
                conn.send((function, args))
                ok, value = conn.recv()
        except _Unavailable:
            raise
        except (OSError, EOFError) as error:
            dropped = error
            continue
        if not ok:
            raise RuntimeError(f"GX's shared process failed:\n{value}")
        return value
    raise _Unavailable(f"it dropped two calls in a row ({dropped!r})") from dropped


def _run(function: str, args: tuple) -> Any:
    """What a call does: in the shared process, or here where that is off or cannot start."""
    from tasks import expectations

    if function == "ready":
        return expectations.import_gx()
    if function == "pid":
        return os.getpid()
    return getattr(expectations, function)(*args)


def _connect() -> Connection:
    try:
        path = address()
    except PermissionError as error:  # a runtime folder that others could open
        raise _Unavailable(str(error)) from error
    with contextlib.suppress(OSError):
        return Client(str(path), family="AF_UNIX")
    log = path.with_suffix(".log")
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tasks.gx_process", str(path), str(keep_alive_s())],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[1],  # `tasks` importable wherever the caller runs
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            return Client(str(path), family="AF_UNIX")
        if process.poll() not in (None, 0):  # 0: another caller's process holds the lock and starts
            break
        time.sleep(0.05)
    raise _Unavailable(f"it did not start (its log: {log})")


def running(folder: Path | None = None) -> list[Path]:
    """The sockets of the shared processes in `folder` (default: this user's runtime folder)."""
    return sorted((folder or runtime_dir()).glob("gx-*.sock"))


def stop(folder: Path | None = None) -> int:
    """End the shared processes in `folder` (`cosmos-warm stop`, a test's end); how many there were."""
    ended = 0
    for path in running(folder):
        try:
            with Client(str(path), family="AF_UNIX") as conn:
                conn.send(("stop", ()))
                conn.recv()
        except (OSError, EOFError):
            path.unlink(missing_ok=True)  # left by one that was killed
            continue
        ended += 1
    return ended


# --- the shared process ------------------------------------------------------------------------------------


class _Server:
    def __init__(self, path: Path, keep_alive_s: float) -> None:
        self.path, self.keep_alive_s = path, keep_alive_s
        self.gx = threading.Lock()  # one table at a time: GX's contexts are not shared between threads
        self.lock = threading.Lock()  # `busy` and `last`: accepting a call never waits for a table
        self.busy = 0
        self.last = time.monotonic()
        self.ready = threading.Event()
        self.failed: str | None = None  # why GX could not be imported: every call is told

    def handle(self, conn: Connection) -> None:
        try:
            with conn:
                self.answer(conn)
        finally:
            with self.lock:
                self.busy -= 1
                self.last = time.monotonic()

    def answer(self, conn: Connection) -> None:
        try:
            function, args = conn.recv()
        except (OSError, EOFError):
            return
        if function == "stop":
            conn.send((True, None))
            self.end()
        self.ready.wait()
        with self.gx:
            try:
                reply = (True, _run(function, args)) if self.failed is None else (False, self.failed)
            except Exception:  # noqa: BLE001  (the caller raises it)
                reply = (False, traceback.format_exc())
        with contextlib.suppress(OSError):
            conn.send(reply)
        if self.failed is not None:
            self.end()  # the next caller starts one that tries again (after a repair, say)

    def watch(self) -> None:
        """End after `keep_alive_s` without a call."""
        while True:
            time.sleep(min(5.0, self.keep_alive_s / 4))
            with self.lock:
                if not self.busy and time.monotonic() - self.last > self.keep_alive_s:
                    self.end()

    def end(self) -> None:
        """Callers queued on the socket find it closed and start another; the lock goes with the process."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        os._exit(0)


def serve(path: Path, keep_alive_s: float) -> None:
    lock = hold_lock(path.with_suffix(".lock"))
    if lock is None:
        return  # another one for this code is starting or serving: callers reach it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # its own session; SIGTERM ends it at once
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a socket left by one that was killed
    listener = Listener(str(path), family="AF_UNIX", backlog=64)
    server = _Server(path, keep_alive_s)
    threading.Thread(target=server.watch, daemon=True).start()

    def warm_up() -> None:
        try:
            from tasks.expectations import import_gx

            import_gx()
            print(f"GX imported in {time.process_time():.1f} s of CPU; serving on {path}", flush=True)
        except BaseException:  # noqa: BLE001  (callers get it: each call fails with it)
            server.failed = traceback.format_exc()
            print(server.failed, flush=True)
        server.ready.set()

    threading.Thread(target=warm_up, daemon=True).start()
    while True:
        conn = listener.accept()
        with server.lock:
            server.busy += 1
        threading.Thread(target=server.handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), float(sys.argv[2]))
