"""The flow's wait on a warm worker, against a stand-in for Prefect's future and client: the cases a live
stack hits only under load (tests/production/test_stack.py runs the real thing)."""

import subprocess
from types import SimpleNamespace
from uuid import uuid4

import pytest
from prefect.states import Completed, Running

import tasks.warm
from cosmos_pipeline.settings import load_settings
from tasks.warm import WorkerLostError, await_worker, has_ended, this_process


class Future:
    """A task run whose reads follow `states` (None: a read that finds no state)."""

    def __init__(self, states: list) -> None:
        self.task_run_id, self.states = uuid4(), states

    def wait(self, timeout: float) -> None:  # Prefect's raises on a read without a state
        raise RuntimeError(f"Task run {self.task_run_id} has no state which means it hasn't started yet.")

    def result(self) -> str:
        return "the record"


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch):
    """Each read of the task run takes the future's next state; beats are read from `beats`."""
    reads = SimpleNamespace(future=None, beats=[])

    class Client:
        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def read_task_run(self, task_run_id):
            states = reads.future.states
            return SimpleNamespace(state=states.pop(0) if len(states) > 1 else states[0])

        def read_variable_by_name(self, name):
            value = reads.beats.pop(0) if len(reads.beats) > 1 else reads.beats[0]
            return SimpleNamespace(value=value)

        def set_task_run_state(self, task_run_id, state, force=False) -> None:
            reads.crashed = state

    reads.probes = []  # the server's answers to the loss check's writes: prompt (True) or held (False)
    monkeypatch.setattr(tasks.warm, "get_client", lambda sync_client: Client())
    probe = lambda name: reads.probes.pop(0) if reads.probes else True  # noqa: E731
    monkeypatch.setattr(tasks.warm, "server_takes_writes", probe)
    monkeypatch.setattr(tasks.warm, "POLL_S", 0.0)
    return reads


def test_a_task_run_read_between_two_states_is_waited_on(client) -> None:
    client.future = Future([None, Running(), None, Completed()])
    client.beats = [{"worker": "w", "beat": 1}]
    assert await_worker(client.future, load_settings("tiny")) == "the record"


def test_a_worker_whose_beat_stops_is_lost_and_its_task_run_crashed(client) -> None:
    client.future = Future([Running()])
    client.beats = [{"worker": "host-1", "beat": 3}]
    settings = load_settings("tiny").model_copy(update={"warm_lost_after_s": 0.0})
    with pytest.raises(WorkerLostError, match="warm worker host-1 stopped beating"):
        await_worker(client.future, settings)
    assert client.crashed.is_crashed()


def test_a_beat_held_by_a_stalled_server_is_not_a_lost_worker(client) -> None:
    """The server held every write (a locked SQLite database) while the beat looked stale: the wait goes on,
    and the worker is taken for lost only once the server takes writes promptly again."""
    client.future = Future([Running()])
    client.beats = [{"worker": "host-1", "beat": 3}]
    client.probes = [False, False]
    settings = load_settings("tiny").model_copy(update={"warm_lost_after_s": 0.0})
    with pytest.raises(WorkerLostError, match="warm worker host-1 stopped beating"):
        await_worker(client.future, settings)
    assert client.probes == []  # both held writes were waited out before the verdict


def test_a_stall_that_ends_lets_the_generation_finish(client) -> None:
    client.future = Future([Running(), Running(), Running(), Completed()])
    client.beats = [{"worker": "host-1", "beat": 3}]
    client.probes = [False, False, False]
    settings = load_settings("tiny").model_copy(update={"warm_lost_after_s": 0.0})
    assert await_worker(client.future, settings) == "the record"


def test_a_worker_process_that_ended_on_this_machine_is_lost_at_once(client) -> None:
    """Its beat names a process of this machine that is gone: lost two polls later, long before the silence
    (`warm_lost_after_s`) would tell; a living process, or one of another machine, is left to the beats."""
    child = subprocess.Popen(["sleep", "60"])
    process = {**this_process(), "pid": child.pid, "started": tasks.warm._start_time(child.pid)}
    assert not has_ended(process)
    assert not has_ended({**process, "machine": "another host"}) and not has_ended({**process, "pid": None})
    child.kill()
    child.wait()
    assert has_ended(process) and not has_ended({**process, "machine": "another host"})

    client.future = Future([Running()])
    client.beats = [{"worker": "host-7", "beat": 1, "process": process}]
    settings = load_settings("tiny").model_copy(update={"warm_lost_after_s": 3600.0})
    with pytest.raises(WorkerLostError, match="warm worker host-7 is gone: its process ended"):
        await_worker(client.future, settings)
    assert client.crashed.is_crashed()


def test_an_ended_worker_whose_state_comes_late_is_not_lost(client) -> None:
    """The worker finished and left; its final state is read a poll after its process was seen gone."""
    client.future = Future([Running(), Completed()])
    ended = {**this_process(), "pid": 2**22 + 1, "started": "1"}  # above Linux's pid limit: no such process
    client.beats = [{"worker": "host-7", "beat": 1, "process": ended}]
    assert await_worker(client.future, load_settings("tiny")) == "the record"
