"""The user's runtime folder: sockets, locks and logs of the processes that commands share on a host (the
command line's warm process, GX's shared process)."""

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO


def runtime_dir() -> Path:
    """A folder only this user can open: whoever can connect to a shared process runs code as its user."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    folder = Path(base) / f"cosmos-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{folder} must belong to you and be closed to others (chmod 700)")
    return folder


def hold_lock(path: Path) -> IO | None:
    """An exclusive lock on `path`, held while the returned file stays open (for a shared process, its
    life: the kernel drops it however the process ends); None if another process holds it."""
    lock = open(path, "w")  # noqa: SIM115  (the caller keeps it open)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock
