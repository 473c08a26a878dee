"""The generate flow, for real: Prefect API server, embedded model, MLflow SQLite store.

Each mode runs as its own flow run; what MLflow holds is read back through `MlflowClient`.
"""

import json
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from cosmos_pipeline.loading import PIPELINES
from cosmos_pipeline.request import GenerationRequest
from flows import cli
from flows.generate import generate
from tasks.track import RUN_PARAMS
from tests.conftest import ASSETS, TINY_FLAGS

pytestmark = pytest.mark.usefixtures("prefect_api")

MODES = {
    "text2world": ("text2world.json", {}),
    "image2world": ("image2world.json", {}),
    "video2world": ("video2world.json", {}),
    "text2image": ("text2image.json", {"num_output_frames": 1}),
    "image2image": (
        "media/warehouse_robot.png",
        {"num_output_frames": 1, "prompt": "a robot arm", "name": "still"},
    ),
}


def artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def task_run_names(flow_run_id) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [run.name for run in runs]


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_is_a_flow_run_and_a_tracked_mlflow_run(mode: str, tracked, mlflow_client) -> None:
    source, flags = MODES[mode]
    state = generate(
        input_path=str(ASSETS / source),
        overrides={**TINY_FLAGS, **flags},
        settings=tracked,
        return_state=True,
    )
    assert state.is_completed(), state
    [record] = state.result()
    run = mlflow_client.get_run(record.run_id)
    config = json.loads(Path(mlflow_client.download_artifacts(run.info.run_id, "config.json")).read_text())
    request = GenerationRequest(**config["request"])
    assert config["settings"]["experiment"] == tracked["experiment"]
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    video = mode.endswith("world")

    assert run.info.status == "FINISHED"
    # params: what a person compares, the variant first, and the device and dtype that ran
    assert set(params) == {*RUN_PARAMS, "dtype", "device"}
    assert params["model_id"] == "embedded:tiny" and params["revision"] == "diffusers/base/post-trained"
    assert params["variant"] == "post-trained" and params["lora"] == "none"
    assert params["seed"] == str(record.seed) == str(request.seed)
    assert (params["steps"], params["resolution"]) == ("2", "64x112")
    assert params["frames"] == ("9" if video else "1") and params["guidance"] == "7.0"
    assert (params["dtype"], params["device"], params["acceleration"]) == ("float32", "cpu", "default")
    assert run.data.tags["pipeline.execution_device"] == "cpu" and tags["guardrail"] == "False"
    assert {"acceleration.attention", "acceleration.compile"} <= set(tags)
    assert {"version.torch", "version.diffusers", "version.project", "mlflow.source.git.commit"} <= set(tags)
    assert run.info.run_name == f"post-trained · {request.label} · seed {request.seed}"
    # tags: mode, variant, asset, the Prefect flow run
    assert tags["mode"] == mode and request.mode == mode
    assert tags["variant"] == "post-trained" and tags["asset"] == request.label
    assert tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert tags["prefect.flow_name"] == "generate"
    assert tags["output_gate"] == "passed" or tags["output_gate"].startswith("flagged: ")
    # metrics: stage timings, per-step time by step index, output metrics, per-frame statistics
    assert {"time/prompt_encoding_s", "time/denoising_s", "time/decode_s", "time/total_s"} <= set(metrics)
    steps = mlflow_client.get_metric_history(run.info.run_id, "time/step_s")
    assert sorted(metric.step for metric in steps) == [0, 1]
    assert {"output/exposure", "output/sharpness", "output/clip_high"} <= set(metrics)
    assert ("output/temporal_consistency" in metrics) is video and ("output/flicker" in metrics) is video
    assert ("output/conditioning_ssim" in metrics) is (request.input_path is not None)
    frames = mlflow_client.get_metric_history(run.info.run_id, "frame/mean_luma")
    assert len(frames) == request.num_frames
    # artifacts: output, prompt, config, GX results, input, key frames, frame table
    found = artifacts(mlflow_client, run.info.run_id)
    output = Path(record.output_path)
    assert output.is_file() and f"output/{output.name}" in found and f"output/{output.name}.json" in found
    assert {"prompt.txt", "config.json", "validation/requests.json", "validation/frames.json"} <= found
    assert "frame_statistics.json" in found
    keyframes = [path for path in found if path.startswith("images/keyframes") and path.endswith(".png")]
    assert len(keyframes) == (3 if video else 1)
    if request.input_path is not None:
        assert f"input/{request.input_path.name}" in found and len(tags["input_sha256"]) == 64
    sidecar = json.loads(output.with_name(output.name + ".json").read_text())
    assert sidecar["mlflow_run_id"] == run.info.run_id
    assert (sidecar["request"]["device"], sidecar["request"]["dtype"]) == ("cpu", "float32")
    assert output.stat().st_mode & 0o777 == output.with_name(output.name + ".json").stat().st_mode & 0o777


def test_bad_batch_fails_validation_and_generates_nothing(tmp_path: Path, tracked, mlflow_client) -> None:
    batch = tmp_path / "batch.jsonl"
    lines = [
        {"name": "fine", "prompt": "a robot"},
        {"name": "frames", "prompt": "a robot", "num_output_frames": 30},
        {"name": "steps", "prompt": "a robot", "num_steps": 5000},
        {"name": "media", "prompt": "a robot", "input_path": "missing.png"},
    ]
    batch.write_text("\n".join(json.dumps(line) for line in lines))
    loads = sum(PIPELINES.loads.values())

    model = {
        key: TINY_FLAGS[key] for key in ("model_id", "height", "width", "device")
    }  # rows keep their frames
    state = generate(input_path=str(batch), overrides=model, settings=tracked, return_state=True)

    assert state.is_failed()
    assert state.message.startswith("3 of 4 request(s) invalid:")
    for line in ("row 2 (frames): `num_output_frames`: 30 frames is not of the form 4k+1",
                 "row 3 (steps): `num_steps`:", "row 4 (media): `input_path`: input media"):  # fmt: skip
        assert line in state.message, state.message
    names = task_run_names(state.state_details.flow_run_id)
    assert "validate-batch" in " ".join(names) and not any(name.startswith("generate") for name in names)
    assert sum(PIPELINES.loads.values()) == loads and not (tmp_path / "outputs").exists()
    [run] = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name(tracked["experiment"]).experiment_id]
    )
    assert run.info.status == "FAILED" and run.data.tags["mode"] == "validation"
    assert run.data.tags["error_type"] == "BatchValidationError" and run.data.tags["error"] == state.message
    report = Path(mlflow_client.download_artifacts(run.info.run_id, "validation/validation.md")).read_text()
    assert "| 2 | frames | `num_output_frames` |" in report and "| 4 | media | `input_path` |" in report


def test_failed_generation_leaves_no_output_and_a_failed_run(
    monkeypatch: pytest.MonkeyPatch, tracked, mlflow_client
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("the GPU fell over")

    monkeypatch.setattr("cosmos_pipeline.generate.generate", broken)
    state = generate(
        input_path=str(ASSETS / "text2world.json"), overrides=TINY_FLAGS, settings=tracked, return_state=True
    )
    assert state.is_failed()
    assert names_count(task_run_names(state.state_details.flow_run_id), "generate") == 1  # not retried
    [run] = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name(tracked["experiment"]).experiment_id]
    )
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: the GPU fell over"
    assert (
        "the GPU fell over"
        in Path(mlflow_client.download_artifacts(run.info.run_id, "error.txt")).read_text()
    )
    assert not Path(run.data.tags["output_path"]).exists()
    assert not list(Path(tracked["output_dir"]).glob("*"))


def names_count(names: list[str], prefix: str) -> int:
    return sum(name.startswith(prefix) for name in names)


def cli_environment(monkeypatch: pytest.MonkeyPatch, tracked) -> None:
    monkeypatch.setenv("COSMOS_TRACKING_URI", tracked["tracking_uri"])
    monkeypatch.setenv("COSMOS_ARTIFACT_ROOT", tracked["artifact_root"])
    monkeypatch.setenv("COSMOS_EXPERIMENT", tracked["experiment"])


def flag_list(flags: dict) -> list[str]:
    return [item for key, value in flags.items() for item in (f"--{key}", str(value))]


def test_cli_runs_the_flow_and_says_where_the_run_is(
    monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path, tracked, mlflow_client
) -> None:
    cli_environment(monkeypatch, tracked)
    argv = [
        "--input_path",
        str(ASSETS / "text2world.json"),
        "--output_path",
        str(tmp_path / "out"),
        "--seed",
        "7",
    ]
    assert cli.run(argv + flag_list(TINY_FLAGS)) == 0
    printed = capsys.readouterr().out
    [run] = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name(tracked["experiment"]).experiment_id]
    )
    assert run.info.run_id in printed and tracked["experiment"] in printed
    assert f"mlflow ui --backend-store-uri {tracked['tracking_uri']}" in printed
    assert run.data.params["seed"] == "7" and (tmp_path / "out" / "text2world_warehouse.mp4").is_file()


def test_cli_bad_input_exits_2_before_any_flow_run(monkeypatch: pytest.MonkeyPatch, capsys, tracked) -> None:
    cli_environment(monkeypatch, tracked)
    with get_client(sync_client=True) as client:
        before = len(client.read_flow_runs())
    argv = ["--prompt", "a robot", "--num_output_frames", "30", "--model_id", "embedded:tiny"]
    assert cli.run(argv) == 2
    assert "4k+1" in capsys.readouterr().err
    with get_client(sync_client=True) as client:
        assert len(client.read_flow_runs()) == before
