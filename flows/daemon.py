"""The command line's warm process: `cosmos-generate` and `cosmos-evaluate` hand their call to a process that
already has Prefect, MLflow, GX and diffusers imported, its Prefect server up and the model loaded, and that
stays for `keep_alive_s` (default 300 s, COSMOS_KEEP_ALIVE_S) after its last call, as `ollama` keeps a model
loaded. On a 2-core CPU that is seconds instead of ~20 s of imports and start-up per call; on a GPU it also
saves loading the weights. `keep_alive_s = 0` turns it off: every call then does everything itself.

A call (`hand_over`, in the command's own process) checks its flags and every request first, so bad input
never waits for anything; then it connects to the warm process of this checkout, directory and environment
(`environment_key`), starting one if none answers, and passes it its stdout and stderr: the warm process
writes to the user's terminal itself, progress bars included. Each call is its own Prefect flow run and MLflow
run, exactly as in-process. Ctrl-C and SIGTERM are forwarded, so the run stops as it would in-process (MLflow
run KILLED, nothing half-written, exit 130/143); a caller that dies outright stops its run the same way. A
warm process busy with another call answers `busy`, and that call runs in its own process.

A warm process ends after `keep_alive_s` without calls, when the code it runs changes on disk, or on
`cosmos-warm stop` (SIGTERM, which also stops a call in progress as Ctrl-C would), stopping its Prefect
server. Its socket, lock, log and a status file live in a folder only its user can open (`runtime_dir`).
GX's shared process (`tasks.gx_process`) keeps its own keep-alive; `cosmos-warm stop` ends it too.
"""

import argparse
import contextlib
import hashlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from tasks import gx_process
from tasks.runtime import hold_lock, runtime_dir

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "cosmos_pipeline")  # what the warm process has imported: an edit ends it
# Variables that differ between terminals of one user but change nothing a call does.
IGNORED_ENV = frozenset({
    "PWD", "OLDPWD", "SHLVL", "_", "TERM", "COLORTERM", "COLUMNS", "LINES", "PS1", "PS2", "SSH_CLIENT",
    "SSH_CONNECTION", "SSH_TTY", "TMUX", "TMUX_PANE", "STY", "WINDOW", "PYTEST_CURRENT_TEST",
    "COSMOS_KEEP_ALIVE_S",  # each call says how long the process stays after it
})  # fmt: skip
READY_TIMEOUT_S = 300.0  # a warm process's start-up (imports, its Prefect server) on a loaded small machine
STALE_CHECK_S = 10.0  # how often an idle warm process looks for edits to its code
EXIT_FAILURE = 1


def code_key() -> str:
    """Changes whenever the project's files or the installed packages change."""
    digest = hashlib.sha256(sys.executable.encode())
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                info = path.stat()
                digest.update(f"{path}:{info.st_mtime_ns}:{info.st_size}".encode())
    digest.update(str(Path(sysconfig.get_paths()["purelib"]).stat().st_mtime_ns).encode())
    return digest.hexdigest()


def environment_key() -> str:
    """One warm process per code, directory and environment: relative paths, settings and libraries that read
    the environment once at import all see exactly what the calling command would have seen."""
    environment = sorted((key, value) for key, value in os.environ.items() if key not in IGNORED_ENV)
    digest = hashlib.sha256(json.dumps([code_key(), os.getcwd(), environment]).encode())
    return digest.hexdigest()[:24]


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


# --- the calling command's side ---------------------------------------------------------------------------


def hand_over(command: str, argv: Sequence[str], keep_alive_s: float) -> int | None:
    """Run `command argv` in the warm process and return its exit code; None where the warm process cannot
    take the call (busy, or it could not start): the caller then runs it itself."""
    try:
        folder = runtime_dir()
    except OSError as error:
        print(f"note: no warm process ({error}); running here", file=sys.stderr)
        return None
    name = environment_key()
    conn = _connect(folder, name, keep_alive_s)
    if conn is None:
        return None
    with conn, conn.makefile("rb") as replies:
        first = replies.readline()  # while the warm process starts, this waits (Ctrl-C ends the call)
        if not first or "ready" not in json.loads(first):
            return None  # busy with another call, or it ended before taking this one
        request = {"command": command, "argv": list(argv), "keep_alive_s": keep_alive_s}
        socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [1, 2])

        def forward(signum: int, frame) -> None:
            with contextlib.suppress(OSError):
                _send(conn, {"signal": signum})

        previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            last = replies.readline()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if not last:
        log = folder / f"{name}.log"
        print(f"error: the warm process ended during the call; its log: {log}", file=sys.stderr)
        return EXIT_FAILURE
    return int(json.loads(last)["exit"])


def _try_connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


def _connect(folder: Path, name: str, keep_alive_s: float) -> socket.socket | None:
    path = folder / f"{name}.sock"
    conn = _try_connect(path)
    if conn is not None:
        return conn
    print(
        f"starting a warm process for this and later calls (it stays {keep_alive_s:g} s after the last; "
        "COSMOS_KEEP_ALIVE_S=0 turns it off, `cosmos-warm stop` ends it)",
        file=sys.stderr,
    )
    with open(folder / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", "flows.daemon", str(path), "--keep-alive", str(keep_alive_s)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # the terminal's Ctrl-C reaches the command, which forwards it
        )
    deadline = time.monotonic() + 30  # it binds its socket before importing anything heavy
    while time.monotonic() < deadline:
        conn = _try_connect(path)
        if conn is not None:
            return conn
        if process.poll() is not None and process.returncode != 0:
            break
        time.sleep(0.02)
    log = folder / f"{name}.log"
    print(f"note: the warm process did not start (its log: {log}); running here", file=sys.stderr)
    return None


# --- the warm process --------------------------------------------------------------------------------------


class _State:
    """`reserved`: a call is queued or running, so another gets `busy`; `running`: signals go to it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reserved = False
        self.running = False


def _accept(listener: socket.socket, calls: "queue.Queue[socket.socket]", state: _State) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # closed: the process is ending
        uid = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)[4:8]
        if int.from_bytes(uid, sys.byteorder) != os.getuid():
            conn.close()
            continue
        with state.lock:
            busy, state.reserved = state.reserved, True
        if busy:
            with contextlib.suppress(OSError):
                _send(conn, {"busy": True})
            conn.close()
        else:
            calls.put(conn)


def _signal_in(line: bytes) -> int | None:
    """The signal a caller's line forwards (`{"signal": 2}`), or None for a line that is not one."""
    try:
        number = int(json.loads(line)["signal"])
    except (ValueError, KeyError, TypeError):
        return None
    return number if number in signal.valid_signals() else None


def _watch(conn: socket.socket, state: _State) -> None:
    """Forward the caller's signals to this process's main thread, where the call runs; a caller that is gone
    (killed outright) counts as SIGTERM. A line that names no signal is skipped."""
    with contextlib.suppress(OSError), conn.makefile("rb") as lines:
        for line in iter(lines.readline, b""):
            number = _signal_in(line)
            with state.lock:
                if not state.running:
                    return
                if number is not None:
                    signal.pthread_kill(threading.main_thread().ident, number)
    with state.lock:
        if state.running:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)


def _receive(conn: socket.socket) -> tuple[dict | None, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 2)
    while data and not data.endswith(b"\n"):
        more = conn.recv(1 << 16)
        if not more:
            break
        data += more
    try:
        message = json.loads(data) if data else None
    except ValueError:
        message = None
    if not isinstance(message, dict) or "command" not in message or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return None, []
    return message, fds


Commands = dict[str, Callable[[list[str]], int]]


def _serve_call(conn: socket.socket, state: _State, commands: Commands) -> float | None:
    """One call, its output on the caller's stdout and stderr; the keep-alive it asked for."""
    with conn:
        try:
            _send(conn, {"ready": os.getpid()})
            message, fds = _receive(conn)
        except OSError:
            return None  # the caller gave up while this process was starting
        if message is None:
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in fds:
            os.close(fd)
        with state.lock:
            state.running = True
        threading.Thread(target=_watch, args=(conn, state), daemon=True).start()
        try:
            code = commands[message["command"]](message["argv"])
        except KeyboardInterrupt:  # a signal forwarded as the command was returning
            code = 130
        except SystemExit as done:  # argparse and friends end a command this way
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else EXIT_FAILURE)
        except BaseException:  # noqa: BLE001  (the caller gets the traceback and a failure; this process stays)
            traceback.print_exc()
            code = EXIT_FAILURE
        finally:
            with state.lock:
                state.running = False
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        with contextlib.suppress(OSError):
            _send(conn, {"exit": code})
        return float(message.get("keep_alive_s", 0))


def _warm_up():
    """Everything a call needs, once: the Prefect server (when none is configured), the flows, diffusers'
    pipeline code and GX's shared process (started now if none runs)."""
    from flows import cli

    server = cli.start_server()
    import flows.evaluate  # noqa: F401
    import flows.generate  # noqa: F401
    from cosmos_pipeline.loading import import_pipeline_code
    from tasks import gx_process

    gx_process.start()
    import_pipeline_code()
    cli.use_server(server)
    return server


def _stop_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(0)


def serve(path: Path, keep_alive_s: float) -> None:
    """The warm process: one call at a time until `keep_alive_s` pass without one."""
    lock = hold_lock(path.with_suffix(".lock"))
    if lock is None:
        return  # another one for this key is starting or serving: callers reach it
    started_code = code_key()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # its own session: a terminal's Ctrl-C is never meant for it
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    status, stop = path.with_suffix(".json"), path.with_suffix(".stop")
    stop.unlink(missing_ok=True)
    info = {"pid": os.getpid(), "cwd": os.getcwd(), "started": time.time(), "keep_alive_s": keep_alive_s}
    _write_status(status, info)
    calls: queue.Queue[socket.socket] = queue.Queue()
    state = _State()
    threading.Thread(target=_accept, args=(listener, calls, state), daemon=True).start()
    sys.stdout.reconfigure(line_buffering=True)  # a caller's terminal sees each line as it comes
    server = None
    from flows import cli

    try:
        server = _warm_up()
        commands = {
            "generate": lambda argv: cli.interruptible(lambda: cli.generate_command(argv)),
            "evaluate": lambda argv: cli.interruptible(lambda: cli.evaluate_command(argv)),
        }
        idle_since = time.monotonic()
        while True:
            remaining = keep_alive_s - (time.monotonic() - idle_since)
            if remaining <= 0 or code_key() != started_code or stop.exists():
                break
            try:
                conn = calls.get(timeout=min(remaining, STALE_CHECK_S))
            except queue.Empty:
                continue
            try:
                asked = _serve_call(conn, state, commands)
            finally:
                with state.lock:
                    state.reserved = False
            keep_alive_s = keep_alive_s if asked is None else asked
            _write_status(status, info | {"keep_alive_s": keep_alive_s})
            idle_since = time.monotonic()
    except SystemExit:
        pass  # SIGTERM (`cosmos-warm stop`)
    except BaseException:  # noqa: BLE001  (its log says why; callers run themselves)
        traceback.print_exc()
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        status.unlink(missing_ok=True)
        stop.unlink(missing_ok=True)
        while not calls.empty():  # callers queued as it ended run themselves
            calls.get_nowait().close()
        cli.stop_server(server)
        cli.exit_now(0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.daemon", description="the warm process (internal)")
    parser.add_argument("socket", type=Path)
    parser.add_argument("--keep-alive", type=float, required=True)
    args = parser.parse_args(argv)
    from flows import cli

    cli.IN_WARM_PROCESS = True
    serve(args.socket, args.keep_alive)


# --- `cosmos-warm` -----------------------------------------------------------------------------------------


def _write_status(status: Path, info: dict) -> None:
    """Replaced whole, never rewritten in place: `cosmos-warm status` may read it at any moment."""
    partial = status.with_suffix(".json.partial")
    partial.write_text(json.dumps(info))
    os.replace(partial, status)


def warm_processes() -> list[dict]:
    """This user's warm processes, from their status files (the ones whose process is gone are skipped)."""
    found = []
    for status in sorted(runtime_dir().glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(status.read_text())
            cmdline = Path(f"/proc/{info['pid']}/cmdline").read_bytes()
            if b"flows.daemon" in cmdline:
                found.append(info | {"key": status.stem, "log": str(status.with_suffix(".log"))})
    return found


def warm_main(argv: Sequence[str] | None = None) -> None:
    """`cosmos-warm status|stop`: list or end this user's warm processes."""
    parser = argparse.ArgumentParser(
        prog="cosmos-warm",
        description="List or stop the warm processes (and GX's shared process) that speed cosmos-generate.",
    )
    parser.add_argument("action", choices=("status", "stop"))
    args = parser.parse_args(argv)
    processes = warm_processes()
    shared = gx_process.running()
    if not processes and not shared:
        print("no warm process")
    if args.action == "stop" and shared:
        print(f"stopped GX's shared process ({gx_process.stop()} of {len(shared)} answered)")
    elif shared:
        print(f"GX's shared process: {', '.join(map(str, shared))}")
    for info in processes:
        if args.action == "stop":  # SIGTERM ends an idle one; one in a call stops the call, then ends
            runtime_dir().joinpath(f"{info['key']}.stop").touch()
            with contextlib.suppress(ProcessLookupError):
                os.kill(info["pid"], signal.SIGTERM)
            print(f"stopped pid {info['pid']} ({info['cwd']})")
        else:
            age = time.time() - info["started"]
            print(
                f"pid {info['pid']}  up {age:.0f} s  stays {info['keep_alive_s']:g} s after a call  "
                f"{info['cwd']}  log {info['log']}"
            )


if __name__ == "__main__":
    main()
