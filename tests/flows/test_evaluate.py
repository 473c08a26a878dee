"""The evaluation flow: 2 assets x the 2 embedded variants, one parent run with 4 children, each variant
loaded once; `cosmos-compare` prints the same table. What a person sees in MLflow's UI, read back through
the MLflow API (`make ui-check` looks at it in a browser): child runs named and with few params, gates that
say what they found, the parent's per-variant figures, key-frame grids and report, watchable videos."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cosmos_pipeline.loading import PIPELINES
from cosmos_pipeline.media import read_image, read_video
from cosmos_pipeline.runner import OUTPUT_FPS
from flows import compare
from flows.evaluate import evaluate
from tasks.track import PARENT_TAG, RUN_PARAMS
from tests.conftest import ASSETS, TINY_FLAGS

pytestmark = pytest.mark.usefixtures("prefect_api")

SUITE = f"""
name = "tiny-check"
assets = ["{ASSETS / "text2world.json"}", "{ASSETS / "image2world.json"}"]
seeds = [3]

[overrides]
height = {TINY_FLAGS["height"]}
width = {TINY_FLAGS["width"]}
num_output_frames = {TINY_FLAGS["num_output_frames"]}
num_steps = {TINY_FLAGS["num_steps"]}
device = "cpu"

[[variants]]
label = "pre-trained"
model_id = "embedded:tiny"
revision = "diffusers/base/pre-trained"

[[variants]]
label = "post-trained"
model_id = "embedded:tiny"
revision = "diffusers/base/post-trained"
"""


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, mlflow_store, prefect_api) -> dict:
    directory = tmp_path_factory.mktemp("evaluation")
    suite = directory / "suite.toml"
    suite.write_text(SUITE)
    settings = {**mlflow_store, "eval_experiment": "test-evaluation", "output_dir": str(directory / "out")}
    PIPELINES.clear()  # so a variant cached by an earlier test is loaded here, and counted
    result = evaluate(suite=str(suite), settings=settings)
    return {**vars(result), "settings": settings}


def artifacts(client, run_id: str, path: str) -> list[str]:
    return sorted(item.path for item in client.list_artifacts(run_id, path))


def test_one_parent_run_with_a_child_per_case(evaluation, mlflow_client) -> None:
    experiment = mlflow_client.get_experiment_by_name("test-evaluation").experiment_id
    parent = mlflow_client.get_run(evaluation["parent_run_id"])
    children = mlflow_client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert len(mlflow_client.search_runs([experiment])) == 5
    assert parent.info.status == "FINISHED" and parent.data.tags["mode"] == "evaluation"
    assert sorted((run.data.tags["asset"], run.data.tags["variant"]) for run in children) == [
        ("image2world_robot_arm", "post-trained"),
        ("image2world_robot_arm", "pre-trained"),
        ("text2world_warehouse", "post-trained"),
        ("text2world_warehouse", "pre-trained"),
    ]
    assert all(run.info.status == "FINISHED" and run.data.params["seed"] == "3" for run in children)


def test_each_variant_was_loaded_exactly_once(evaluation, mlflow_client) -> None:
    assert evaluation["pipeline_loads"] == {"pre-trained": 1, "post-trained": 1}
    metrics = mlflow_client.get_run(evaluation["parent_run_id"]).data.metrics
    assert metrics["pipeline_loads/pre-trained"] == metrics["pipeline_loads/post-trained"] == 1


def children(client, evaluation: dict) -> list:
    experiment = client.get_experiment_by_name("test-evaluation").experiment_id
    return client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{evaluation['parent_run_id']}'")


def test_child_runs_are_named_for_their_variant_with_a_dozen_params(evaluation, mlflow_client) -> None:
    for run in children(mlflow_client, evaluation):
        tags, params = run.data.tags, run.data.params
        assert run.info.run_name == f"{tags['variant']} · {tags['asset']} · seed 3"
        assert list(params)[:4] == ["variant", "model_id", "revision", "lora"] and len(params) <= 15
        assert set(params) == {*RUN_PARAMS, "dtype", "device"} and params["device"] == "cpu"  # as it ran


def test_gates_say_what_they_found(evaluation, mlflow_client) -> None:
    for run in children(mlflow_client, evaluation):
        gate, flagged = run.data.tags["output_gate"], run.data.metrics["gate/flagged_frames"]
        assert gate == "passed" if flagged == 0 else gate.startswith("flagged: ")
        assert run.info.status == "FINISHED" and "gate/frames_passed" not in run.data.metrics


def test_parent_holds_each_variants_figures_per_mode_and_the_difference(evaluation, mlflow_client) -> None:
    parent = mlflow_client.get_run(evaluation["parent_run_id"])
    assert parent.data.params == {}  # MLflow's image grid would print them over every image
    assert parent.data.tags["baseline"] == "pre-trained"
    metrics = parent.data.metrics
    flicker = {
        (run.data.tags["mode"], run.data.tags["variant"]): run.data.metrics["output/flicker"]
        for run in children(mlflow_client, evaluation)
    }
    for mode in ("text2world", "image2world"):  # one case per (mode, variant): its mean is its value
        for variant in ("pre-trained", "post-trained"):
            assert metrics[f"{mode}/flicker/{variant}"] == pytest.approx(flicker[mode, variant])
        difference = flicker[mode, "post-trained"] - flicker[mode, "pre-trained"]
        assert metrics[f"{mode}/flicker/post-trained - pre-trained"] == pytest.approx(difference)
    assert "image2world/conditioning_psnr/pre-trained" in metrics
    assert "text2world/conditioning_psnr/pre-trained" not in metrics  # nothing to reproduce in Text2World


def test_key_frame_grids_are_images_of_the_parent(evaluation, mlflow_client) -> None:
    parent = evaluation["parent_run_id"]
    images = artifacts(mlflow_client, parent, "images")
    for asset in ("image2world_robot_arm", "text2world_warehouse"):
        key = f"comparison~{asset} seed 3+step+3+"  # log_image(key="comparison/<asset> seed 3", step=3)
        assert [path for path in images if path.startswith(f"images/{key}") and path.endswith(".png")]
    grid = read_image(
        Path(mlflow_client.download_artifacts(parent, "comparison/text2world_warehouse-seed3-keyframes.png"))
    )
    assert grid.shape[0] > 3 * TINY_FLAGS["height"]  # first, middle, last frame


def test_comparison_videos_can_be_watched(evaluation, mlflow_client) -> None:
    parent = evaluation["parent_run_id"]
    assert artifacts(mlflow_client, parent, "comparison") == [
        "comparison/image2world_robot_arm-seed3-keyframes.png",
        "comparison/image2world_robot_arm-seed3.mp4",
        "comparison/text2world_warehouse-seed3-keyframes.png",
        "comparison/text2world_warehouse-seed3.mp4",
    ]
    video = read_video(
        Path(mlflow_client.download_artifacts(parent, "comparison/text2world_warehouse-seed3.mp4"))
    )
    assert video.shape[2] >= 720 and video.shape[0] / OUTPUT_FPS >= 3.0


def test_report_opens_with_the_winner_per_figure_and_links(evaluation, mlflow_client) -> None:
    parent = mlflow_client.get_run(evaluation["parent_run_id"])
    report = Path(mlflow_client.download_artifacts(parent.info.run_id, "report.md")).read_text()
    tables = [line for line in report.splitlines() if line.startswith("| ")]
    assert (
        tables[0]
        == "| mode | figure | better | pre-trained | post-trained | post-trained - pre-trained | winner |"
    )
    assert report.index("Winner per figure") < report.index("## Every figure of every case")
    assert "| image2world | conditioning_psnr | higher |" in report
    runs = f"](#/experiments/{parent.info.experiment_id}/runs/"
    child = children(mlflow_client, evaluation)[0].info.run_id
    assert f"{runs}{child})" in report
    assert f"{runs}{parent.info.run_id}/artifacts/comparison/text2world_warehouse-seed3.mp4)" in report
    description = parent.data.tags["mlflow.note.content"]
    assert (
        description.startswith("**post-trained** vs **pre-trained** (baseline): ")
        and tables[0] in description
    )
    summary = json.loads(
        Path(mlflow_client.download_artifacts(parent.info.run_id, "summary.json")).read_text()
    )
    assert len(summary["data"]) == 4 and {"asset", "variant", "seed", "total_s"} <= set(summary["columns"])
    assert "- pre-trained: 1" in report


def test_compare_prints_the_same_table(evaluation, capsys) -> None:
    settings = evaluation["settings"]
    argv = ["--experiment", "test-evaluation", "--tracking_uri", settings["tracking_uri"], "--format", "csv"]
    assert compare.run([*argv, "--parent_run_id", evaluation["parent_run_id"]]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("asset,variant,seed,mode,status,")
    assert len(printed) == 1 + 4
    assert compare.run(argv) == 0  # the whole experiment: the same four generations
    assert len(capsys.readouterr().out.splitlines()) == 1 + 4


def test_lora_variant_against_its_base_in_one_suite(tmp_path, tiny_lora, mlflow_store, mlflow_client) -> None:
    """ "Base vs my post-trained LoRA" is one suite file; the adapter path is relative to it."""
    suite = tmp_path / "suite.toml"
    adapter = Path(os.path.relpath(tiny_lora, tmp_path))
    suite.write_text(f"""
name = "lora-check"
assets = ["{ASSETS / "text2world.json"}"]
seeds = [1]
[overrides]
height = 64
width = 112
num_output_frames = 5
num_steps = 2
device = "cpu"
[[variants]]
label = "base"
model_id = "embedded:tiny"
[[variants]]
label = "lora"
model_id = "embedded:tiny"
lora_path = "{adapter}"
lora_scale = 0.8
""")
    settings = {**mlflow_store, "eval_experiment": "test-lora-eval", "output_dir": str(tmp_path / "out")}
    PIPELINES.clear()
    result = evaluate(suite=str(suite), settings=settings)
    assert result.pipeline_loads == {"base": 1, "lora": 1} and result.cases == 2
    [comparison] = result.comparisons
    assert Path(comparison).is_file()
    experiment = mlflow_client.get_experiment_by_name("test-lora-eval").experiment_id
    children = mlflow_client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{result.parent_run_id}'")
    params = {run.data.tags["variant"]: run.data.params for run in children}
    assert params["lora"]["lora"] == f"{tiny_lora.name} x0.8" and params["base"]["lora"] == "none"
    assert {run.info.run_name for run in children} == {"base · text2world_warehouse · seed 1",
                                                       "lora · text2world_warehouse · seed 1"}  # fmt: skip
    outputs = {run.data.tags["variant"]: read_video(Path(run.data.tags["output_path"])) for run in children}
    assert not np.array_equal(outputs["base"], outputs["lora"])
