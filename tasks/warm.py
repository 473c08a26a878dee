"""Warm workers: one long-lived process per GPU that keeps loaded pipelines across flow runs.

A process worker starts a new Python process per flow run, so every triggered request would load
the model again (minutes for the 14B). With `warm_workers` on, the flow hands each generation to a
Prefect task worker (`cosmos-worker`, one per GPU, pinned with CUDA_VISIBLE_DEVICES) with
`generate_on_worker.delay(job)`. The worker's process keeps `PIPELINES` loaded, writes the output
and its sidecar, tracks the run, and returns the small record (frames never leave it). Parameters
and results travel through Prefect's result storage: a local folder on one host
(PREFECT_RESULTS_LOCAL_STORAGE_PATH, shared by the flow runs and the workers); across hosts a storage
block on the object store (PREFECT_DEFAULT_RESULT_STORAGE_BLOCK and
PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK, which `scripts/stack.py --object-store` creates and
sets), with media and outputs named by URI.

A worker takes a generation only when it is idle: Prefect's stock task worker accepts the next run
while busy and holds it, so an idle GPU would wait, and the held run would die with its worker.
While it generates, the worker beats a Prefect variable every HEARTBEAT_S. The flow waits on the
task run; a beat that stops for `warm_lost_after_s` means the worker is gone (killed, host down): the
task run is marked crashed and submitted again (up to `settings.warm_resubmissions` times), so another
worker takes it over in the same MLflow run. A worker on the flow's own machine whose process has ended
(killed, out of memory) is known lost within two polls, not after the silence: its beat says which process
it is. A generation no worker starts within `warm_start_timeout_s` fails.
"""

import argparse
import asyncio
import contextlib
import functools
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, TaskRun
from prefect.client.subscriptions import Subscription
from prefect.exceptions import ObjectNotFound
from prefect.futures import PrefectDistributedFuture
from prefect.settings import get_current_settings
from prefect.states import Crashed
from prefect.task_worker import TaskWorker
from prefect.variables import Variable
from websockets.exceptions import WebSocketException

from cosmos_pipeline.settings import Settings
from cosmos_pipeline.sidecar import read_sidecar
from cosmos_pipeline.storage import exists
from tasks.generate import STOPPING, GenerationStopped
from tasks.run import run_generation
from tasks.scrub import install_log_scrubber
from tasks.track import GenerationRecord, Job, reused_record, worker_name

HEARTBEAT_S = 5.0  # settings.warm_lost_after_s (>= 15 s: three beats) of silence means the worker is gone
POLL_S = 2.0


class WorkerLostError(RuntimeError):
    """The worker generating a request stopped beating (its process or host died)."""


class NoWarmWorkerError(RuntimeError):
    """No warm worker started a generation within `warm_start_timeout_s`."""


class WarmWorkerRefusedError(RuntimeError):
    """A warm worker could not load a generation's parameters and dropped it."""


def beat_name(task_run_id: Any) -> str:
    return f"cosmos-beat-{task_run_id}"


@contextlib.contextmanager
def heartbeat(task_run_id: Any) -> Iterator[None]:
    """Beat `beat_name(task_run_id)` from a thread until the block ends; the variable goes with it."""
    name, stop, process = beat_name(task_run_id), threading.Event(), this_process()

    def beat() -> None:
        count = 0
        while True:
            count += 1
            with contextlib.suppress(Exception):  # a missed beat is what the waiting flow measures
                value = {"worker": worker_name(), "beat": count, "process": process}
                Variable.set(name, value, overwrite=True)
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, name="cosmos-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(Exception):
            Variable.unset(name)


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None if it has ended (or is a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in {"Z", "X"} else fields[19]


@functools.cache
def _machine() -> str | None:
    """The kernel's boot id and this process's PID namespace: one value per machine (a container is one of
    its own), within which a pid names a process. None where there is no /proc."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def this_process() -> dict[str, Any] | None:
    """Which process this is, for a flow on the same machine to see it end (the start time tells a reused
    pid apart). None where there is no /proc: only the beats' silence tells then."""
    machine = _machine()
    if machine is None:
        return None
    return {"machine": machine, "pid": os.getpid(), "started": _start_time(os.getpid())}


def has_ended(process: Any) -> bool:
    """Whether a beat's `process` ran on this machine and has ended since."""
    machine = _machine()
    if not isinstance(process, dict) or machine is None or process.get("machine") != machine:
        return False
    pid = process.get("pid")
    return isinstance(pid, int) and _start_time(pid) != process.get("started")


def task_run_key(context, parameters: dict[str, Any]) -> str:
    """Never reuse a result: every submission generates (idempotency is the flow's, by request key)."""
    return f"warm-{context.task_run.id}"


@task(
    name="generate-on-worker",
    task_run_name="warm-{job.request.label}",
    cache_key_fn=task_run_key,  # not NONE: a task worker replaces "no cache" with input caching
)
def generate_on_worker(job: Job) -> GenerationRecord | State:
    """`run_generation` in the warm worker's process, beating while it runs. Stopped (SIGTERM) mid-way, the
    task run ends Crashed: its flow hands the generation to another worker."""
    from prefect.runtime import task_run

    with heartbeat(task_run.id):
        try:
            return run_generation(job)
        except GenerationStopped as stopped:
            return Crashed(message=f"worker {worker_name()} stopped: {stopped}")


# ----------------------------------------------------------------------------- the flow's side


def _read_beat(client, name: str) -> Any:
    variable = client.read_variable_by_name(name)
    return None if variable is None else variable.value


def server_takes_writes(name: str) -> bool:
    """Whether the Prefect server stores a write (variable `name`, removed again) within a beat's interval.
    A stale beat can be the server's silence, not the worker's: Prefect's SQLite database, when locked, holds
    every write for up to 60 s (README "Several users"), the worker's beats among them."""
    start = time.monotonic()
    try:
        Variable.set(name, {"probe": time.time()}, overwrite=True)
        prompt = time.monotonic() - start < HEARTBEAT_S
    except Exception:  # refused ("database is locked") or timed out
        prompt = False
    with contextlib.suppress(Exception):
        Variable.unset(name)
    return prompt


def _give_up(client, task_run_id, error: RuntimeError) -> RuntimeError:
    """Mark the task run crashed (a late worker will not start it), and return the error to raise."""
    client.set_task_run_state(task_run_id, Crashed(message=str(error)), force=True)
    return error


def await_worker(future: PrefectDistributedFuture, settings: Settings) -> GenerationRecord:
    """The record of a generation handed to a warm worker, or why it did not come back.

    Beats are compared with the previous beat, not with a clock, so hosts need not agree on the time.
    The task run is read here rather than through `future.wait`, which fails on a read that finds no
    state: Prefect records a task worker's state changes from events, writing the task run and its
    state apart, so a read in between finds none; that counts as not started yet.
    """
    name, queued = beat_name(future.task_run_id), time.monotonic()
    last_beat, beat_changed, ended_seen = None, None, False
    with get_client(sync_client=True) as client:  # one client for the wait: each costs ~30 ms of CPU
        while True:
            time.sleep(POLL_S)
            try:
                state = client.read_task_run(future.task_run_id).state
            except ObjectNotFound:
                raise WarmWorkerRefusedError(
                    f"a warm worker dropped the generation (task run {future.task_run_id}): it cannot read "
                    "its parameters. Run the workers from the same checkout and version as the flows; see "
                    "their log"
                ) from None
            if state is not None and state.is_crashed():  # its worker stopped (SIGTERM) mid-generation
                raise WorkerLostError(f"warm worker stopped during the generation ({state.message})")
            if state is not None and state.is_final():
                return future.result()
            now = time.monotonic()
            if state is None or state.is_scheduled():  # queued: no worker has taken it yet
                if now - queued > settings.warm_start_timeout_s:
                    raise _give_up(client, future.task_run_id, NoWarmWorkerError(
                        f"no warm worker started the generation within {settings.warm_start_timeout_s:.0f} s;"
                        " start one per GPU (`make stack`, or `cosmos-worker` with CUDA_VISIBLE_DEVICES set),"
                        " or run without warm workers (COSMOS_WARM_WORKERS=0)"
                    ))  # fmt: skip
                continue
            beat = _read_beat(client, name)
            if isinstance(beat, dict) and has_ended(beat.get("process")):
                if ended_seen:  # and still not final a poll later: the state was not merely late
                    raise _give_up(client, future.task_run_id, WorkerLostError(
                        f"warm worker {beat.get('worker')} is gone: its process ended (killed?)"
                    ))  # fmt: skip
                ended_seen = True
                continue
            if beat_changed is None or beat != last_beat:
                last_beat, beat_changed = beat, now
            elif now - beat_changed > settings.warm_lost_after_s:
                if not server_takes_writes(f"cosmos-probe-{future.task_run_id}"):
                    beat_changed = time.monotonic()  # the server held the beats: wait for them again
                    continue
                worker = beat.get("worker") if isinstance(beat, dict) else "(no beat yet)"
                silent = f"{now - beat_changed:.0f} s ago (killed, or its host is down)"
                raise _give_up(client, future.task_run_id, WorkerLostError(
                    f"warm worker {worker} stopped beating {silent}"
                ))  # fmt: skip


def generate_on_warm_worker(job: Job) -> GenerationRecord:
    """Hand the generation to a warm worker and wait; a lost worker's generation is submitted again.

    A worker taken for lost may only have been slow (a loaded host): if its output then appears with this
    job's run id, that attempt finished, and its record is this generation's."""
    logger, name, retries = get_run_logger(), job.request.label, job.settings.warm_resubmissions
    output = job.request.output_path
    assert output is not None
    for attempt in range(retries + 1):
        future = generate_on_worker.delay(job)
        logger.info("%s: handed to a warm worker (task run %s)", name, future.task_run_id)
        try:
            return await_worker(future, job.settings)
        except Exception as error:
            written = read_sidecar(output) if exists(output) else None
            ours = written is not None and written.get("mlflow_run_id") == job.run_id
            if attempt and ours and not isinstance(error, WorkerLostError):
                logger.warning("%s: the worker taken for lost finished it after all: %s", name, output)
                return reused_record(job.request)
            if not isinstance(error, WorkerLostError) or attempt == retries:
                raise
            logger.warning("%s: %s; submitting it again (%d of %d)", name, error, attempt + 1, retries)
            if ours:  # the lost attempt wrote it before it went: this run's own output, replaced
                job = replace(job, request=job.request.model_copy(update={"overwrite": True}))
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- the worker process


class IdleTaskWorker(TaskWorker):
    """A task worker that subscribes only while idle, so a run waits in the server's queue, not in a busy
    worker: the server re-queues a run it could not hand over, and an idle GPU takes it.

    Prefect's own worker keeps its subscription open while it works, and the one private method left here,
    `_subscribe_to_task_scheduling`, is the loop that does so; the rest is Prefect's public API
    (`Subscription`, `execute_task_run`, `handle_sigterm`). SIGTERM stops it cleanly: an idle worker leaves
    at once; a busy one ends its generation at the next step (its flow hands it to another worker) and
    then leaves.
    """

    _waiting: "asyncio.Task[TaskRun] | None" = None

    async def _subscribe_to_task_scheduling(self) -> None:
        base_url = get_current_settings().api.url
        if base_url is None:
            raise ValueError("PREFECT_API_URL must point at a Prefect server for a warm worker")
        while not STOPPING.is_set():
            subscription = Subscription(
                TaskRun, "/task_runs/subscriptions/scheduled", self.task_keys, self.client_id, base_url
            )
            self._waiting = asyncio.ensure_future(subscription.__anext__())
            try:
                task_run = await self._waiting
            except asyncio.CancelledError:
                if STOPPING.is_set():
                    return
                raise
            except (OSError, WebSocketException) as error:  # the server busy or restarting: not the end
                print(f"cosmos-worker: subscription lost ({error}); subscribing again", file=sys.stderr)
                await asyncio.sleep(POLL_S)
                continue
            finally:
                self._waiting = None
                with contextlib.suppress(Exception):
                    await subscription.websocket.close()
            await self.execute_task_run(task_run)  # takes the GPU's one token; returns when done

    def handle_sigterm(self, signum: int, frame: object) -> None:
        STOPPING.set()
        waiting = self._waiting
        if waiting is not None:  # idle: stop waiting for work now
            asyncio.get_running_loop().call_soon_threadsafe(waiting.cancel)


async def serve() -> None:
    worker = IdleTaskWorker(generate_on_worker, limit=1)  # one generation at a time: one GPU
    await worker.start()


def main(argv: Sequence[str] | None = None) -> None:
    """`cosmos-worker`: serve generations on this process's GPU (CUDA_VISIBLE_DEVICES) until stopped."""
    argparse.ArgumentParser(
        prog="cosmos-worker",
        description="A warm generation worker: keeps pipelines loaded across flow runs. Start one per GPU "
        "with CUDA_VISIBLE_DEVICES set, PREFECT_API_URL pointing at the Prefect server and the same "
        "COSMOS_* environment as the process workers. SIGTERM or Ctrl-C stops it cleanly.",
    ).parse_args(argv)
    install_log_scrubber()
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:  # Ctrl-C
        STOPPING.set()
    print(f"cosmos-worker {worker_name()}: stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
