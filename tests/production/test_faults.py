"""Faults inside a long-lived generating process (a warm worker, here this test process): out of GPU
memory, a disk that fills up while writing, an output folder that cannot be written. Each is reported
with what to do, leaves no file behind and a FAILED tracked run, and the next run in the same process
works with the pipeline still loaded. And an attempt that was killed is continued, not duplicated.
"""

import errno
from pathlib import Path

import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import Crashed, Running

from cosmos_pipeline.loading import PIPELINES
from cosmos_pipeline.settings import load_settings, request_rows
from flows.generate import generate
from tasks.postprocess import OutputWriteError
from tasks.spool import experiment_id
from tasks.track import KEY_TAG, DuplicateRequestError
from tests.conftest import ASSETS, TINY_FLAGS

pytestmark = pytest.mark.usefixtures("prefect_api")


def run(tracked: dict, output: Path, **overrides):
    return generate(
        input_path=str(ASSETS / "text2world.json"),
        overrides={**TINY_FLAGS, "output_path": str(output), "seed": 5, **overrides},
        settings=tracked,
        return_state=True,
    )


def only_run(mlflow_client, tracked: dict):
    [found] = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name(tracked["experiment"]).experiment_id]
    )
    return found


def generate_attempts(flow_run_id) -> int:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sum(run.name.startswith("generate-") for run in runs)


def test_out_of_memory_says_what_to_do_and_the_process_keeps_serving(
    tracked, mlflow_client, monkeypatch
) -> None:
    from cosmos_pipeline import runner

    real, calls = runner.generate_request, []

    def out_of_memory_once(pipe, request, on_step=None, options=None):
        calls.append(request.name)
        if len(calls) == 1:  # what torch raises when a CUDA allocation fails
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return real(pipe, request, on_step, options)

    monkeypatch.setattr(runner, "generate_request", out_of_memory_once)
    output = Path(tracked["output_dir"]) / "first.mp4"
    state = run(tracked, output)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, torch.OutOfMemoryError)
    message = str(error)
    assert (
        "out of GPU memory on cpu generating 9 frames at 64x112 (CUDA out of memory. Tried to allocate"
        in message
    )
    assert (
        "Next step: a smaller --resolution (480p) or fewer --num_output_frames; --device_map balanced"
        in message
    )
    assert "--acceleration low-memory" in message and "this worker stays usable" in message
    assert error.__context__ is None and error.__cause__ is None  # the failed step's tensors are not held
    assert generate_attempts(state.state_details.flow_run_id) == 1  # OOM is never retried
    failed = only_run(mlflow_client, tracked)
    assert failed.info.status == "FAILED" and failed.data.tags["error_type"] == "OutOfMemoryError"
    assert not output.exists()

    # The same process, the next request: it runs, on the pipeline that is still loaded.
    loads = sum(PIPELINES.loads.values())
    state = run(tracked, Path(tracked["output_dir"]) / "second.mp4", seed=6)
    assert state.is_completed()
    [record] = state.result()
    assert record.pipeline_loaded is False and sum(PIPELINES.loads.values()) == loads
    assert Path(record.output_path).is_file()


class FullDisk:
    """An encoder that writes part of the video, then finds the disk full."""

    def __init__(self, path, **kwargs) -> None:
        self.path = Path(path)

    def append_data(self, frame) -> None:
        with open(self.path, "ab") as file:
            file.write(b"\0" * 1024)
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("while_writing", ["video", "sidecar"])
def test_full_disk_while_writing_leaves_nothing_and_says_what_to_do(
    while_writing, tracked, mlflow_client, monkeypatch
) -> None:
    import cosmos_pipeline.media
    import cosmos_pipeline.sidecar

    if while_writing == "video":
        monkeypatch.setattr(cosmos_pipeline.media.imageio, "get_writer", FullDisk)
    else:

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(cosmos_pipeline.sidecar.json, "dump", full)
    folder = Path(tracked["output_dir"]) / "full"
    state = run(tracked, folder / "clip.mp4")

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, OutputWriteError) and error.errno == errno.ENOSPC
    assert str(error) == (
        f"[Errno 28] cannot write {folder / 'clip.mp4'}: No space left on device; nothing was written: "
        "free space there or choose another output folder"
    )
    assert sorted(path.name for path in folder.iterdir()) == []  # no output, no sidecar, no temp file
    failed = only_run(mlflow_client, tracked)
    assert failed.info.status == "FAILED" and failed.data.tags["error_type"] == "OutputWriteError"
    assert generate_attempts(state.state_details.flow_run_id) == 1  # the GPU step is not repeated


def test_unwritable_output_folder_is_refused_before_any_generation(tracked, mlflow_client, tmp_path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    loads = sum(PIPELINES.loads.values())
    state = run(tracked, blocker / "clip.mp4")

    assert state.is_failed()
    assert "output directory not writable" in state.message
    assert generate_attempts(state.state_details.flow_run_id) == 0 and sum(PIPELINES.loads.values()) == loads
    failed = only_run(mlflow_client, tracked)
    assert failed.info.status == "FAILED" and failed.data.tags["mode"] == "validation"
    assert blocker.read_text() == "a file where the output folder should be"


def test_a_retry_takes_over_the_interrupted_run_and_a_duplicate_in_progress_is_refused(
    tracked, mlflow_client, tmp_path
) -> None:
    """An attempt killed mid-run (worker SIGKILLed: its run stays RUNNING, or was marked KILLED) is continued
    by the next attempt in the same MLflow run, with the seed it had drawn; while its flow run is alive,
    a second trigger of the same request is refused instead of generating it twice."""
    output = tmp_path / "outputs" / "clip.mp4"
    explicit = {**TINY_FLAGS, "output_path": str(output), "input_path": str(ASSETS / "text2world.json")}
    settings = load_settings(None, **tracked)
    [row] = request_rows(explicit, settings)
    experiment = experiment_id(mlflow_client, tracked["experiment"], settings)
    with get_client(sync_client=True) as client:  # the interrupted attempt's flow run, still "running"
        owner = client.create_flow_run(generate, state=Running())
    interrupted = mlflow_client.create_run(
        experiment,
        tags={KEY_TAG: row.request.key(), "prefect.flow_run_id": str(owner.id)},
        run_name="clip",
    ).info.run_id
    mlflow_client.set_tag(interrupted, "output_path", str(output))
    mlflow_client.log_param(interrupted, "seed", "1234")  # drawn by the interrupted attempt

    def again():
        overrides = {**TINY_FLAGS, "output_path": str(output)}
        return generate(
            input_path=explicit["input_path"], overrides=overrides, settings=tracked, return_state=True
        )

    state = again()
    assert state.is_failed() and isinstance(state.result(raise_on_failure=False), DuplicateRequestError)
    assert "is being generated now by flow run" in str(state.result(raise_on_failure=False))
    assert not output.exists()

    with get_client(sync_client=True) as client:  # the worker died: Prefect marks its flow run crashed
        client.set_flow_run_state(owner.id, Crashed(message="worker killed"), force=True)
    state = again()
    assert state.is_completed(), state
    [record] = state.result()
    assert record.run_id == interrupted and record.seed == 1234 and output.is_file()
    [run] = mlflow_client.search_runs([experiment], f"tags.{KEY_TAG} = '{row.request.key()}'")
    assert run.info.run_id == interrupted and run.info.status == "FINISHED"
    assert run.data.tags["attempts"] == "2" and run.data.tags["previous_flow_run"] == str(owner.id)
