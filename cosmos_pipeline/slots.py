"""One generation at a time per GPU: a lock file per physical GPU of this host, held while generating.

Scope: one physical GPU of one host. GPUs are named by their physical id (through CUDA_VISIBLE_DEVICES), so
two workers pinned to different cards never wait for each other and two on the same card do, whichever
checkout, user or Prefect server they come from. The CPU takes no slot: the operating system shares it,
and serialising every CPU run on a host would make unrelated checkouts wait for minutes.

The lock is an `flock` on `<slot_dir>/<host>-gpu<id>-<n>.lock`. The kernel drops it when its holder ends,
however it ends (Ctrl-C, SIGTERM, SIGKILL, the OOM killer), so a dead holder never blocks the next run:
nothing to renew, nothing to clean up. The file records who holds it, so a waiting run can say who, since
when, and how to free the GPU.
"""

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

POLL_S = 0.5
REMIND_S = 60.0  # a waiting run says again who holds the slot this often


class SlotTimeoutError(TimeoutError):
    """No slot of the device came free within the wait limit."""


@dataclass(frozen=True)
class Holder:
    """Who holds a slot: enough for a person to find the process and decide to stop it."""

    pid: int
    host: str
    since: str  # ISO time
    what: str  # the command line or the run it generates

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since} ({self.what})"


def gpu_ids(device: str, device_map: str | None, visible_count: int) -> list[str]:
    """The physical GPUs a generation on `device` occupies: one, or all visible ones for a device map.

    Empty for the CPU. `visible_count` is `torch.cuda.device_count()` (passed in: no torch import here).
    """
    if not device.startswith("cuda"):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [part.strip() for part in visible.split(",") if part.strip()] if visible else []
    ids = ids or [str(index) for index in range(max(visible_count, 1))]
    if device_map is not None:
        return ids
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    return [ids[index] if index < len(ids) else str(index)]


def slot_names(gpus: list[str]) -> list[str]:
    """What a generation's record says it held: `gpu-<host>-<id>` per GPU."""
    host = socket.gethostname()
    return [f"gpu-{host}-{gpu}" for gpu in gpus]


def _read_holder(path: Path) -> Holder | None:
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _try_lock(path: Path, holder: Holder) -> int | None:
    """The open descriptor holding `path`'s lock, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)  # another user on the host must be able to take it later
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder.__dict__).encode(), 0)
    return fd


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing the descriptor drops the flock


def _waiting_message(gpu: str, holders: list[Holder], waited_s: float) -> str:
    who = "; ".join(holder.describe() for holder in holders) or "a process that has not said who it is"
    return (
        f"waiting for GPU {gpu} of {socket.gethostname()} ({waited_s:.0f} s so far): held by {who}. It is "
        "free as soon as that process ends; to free it now, stop it (e.g. `kill <pid>`)"
    )


@contextlib.contextmanager
def device_slot(
    gpus: list[str], slot_dir: Path, slots_per_gpu: int = 1, timeout_s: float | None = None, what: str = ""
) -> Iterator[list[str]]:
    """Hold one of `slots_per_gpu` slots of each GPU in `gpus` while the block runs; yields their names.

    Waits (saying who holds the GPU, every REMIND_S) until free, or raises SlotTimeoutError after
    `timeout_s`. GPUs are taken in sorted order so two sharded runs cannot deadlock.
    """
    slot_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        slot_dir.chmod(0o1777)  # shared by every user of the host, like /tmp
    host = socket.gethostname()
    holder = Holder(
        os.getpid(), host, datetime.now(UTC).isoformat(timespec="seconds"), what or " ".join(sys.argv)[:200]
    )
    held: list[int] = []
    start = time.monotonic()
    try:
        for gpu in sorted(gpus):
            paths = [slot_dir / f"{host}-gpu{gpu}-{slot}.lock" for slot in range(slots_per_gpu)]
            reminded = -REMIND_S
            while True:
                fd = next((fd for path in paths if (fd := _try_lock(path, holder)) is not None), None)
                if fd is not None:
                    held.append(fd)
                    break
                waited = time.monotonic() - start
                holders = [found for path in paths if (found := _read_holder(path)) is not None]
                if timeout_s is not None and waited >= timeout_s:
                    message = _waiting_message(gpu, holders, waited)
                    raise SlotTimeoutError(
                        message.replace("waiting for", "gave up waiting for", 1)
                        + f"; or raise the wait limit (gpu_wait_timeout_s, now {timeout_s:.0f} s)"
                    )
                if waited - reminded >= REMIND_S:
                    logger.warning("%s", _waiting_message(gpu, holders, waited))
                    reminded = waited
                time.sleep(POLL_S)
        yield slot_names(sorted(gpus))
    finally:
        for fd in held:
            _release(fd)
