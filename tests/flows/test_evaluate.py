"""The evaluation flow: 2 assets x the 2 embedded variants, one parent run with 4 children,
side-by-side MP4s, a summary table, each variant loaded once; `cosmos-compare` prints the same table."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cosmos_pipeline.loading import PIPELINES
from cosmos_pipeline.media import read_video
from flows import compare
from flows.evaluate import evaluate
from tasks.track import PARENT_TAG
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


def test_side_by_side_videos_summary_and_report(evaluation, mlflow_client) -> None:
    parent = evaluation["parent_run_id"]
    assert artifacts(mlflow_client, parent, "comparison") == [
        "comparison/image2world_robot_arm-seed3.mp4",
        "comparison/text2world_warehouse-seed3.mp4",
    ]
    from cosmos_pipeline.media import read_video

    side_by_side = read_video(Path(evaluation["comparisons"][0]))
    assert side_by_side.shape[2] == 2 * TINY_FLAGS["width"]  # both variants, side by side
    summary = json.loads(Path(mlflow_client.download_artifacts(parent, "summary.json")).read_text())
    assert len(summary["data"]) == 4 and {"asset", "variant", "seed", "total_s"} <= set(summary["columns"])
    report = Path(mlflow_client.download_artifacts(parent, "report.md")).read_text()
    assert "## Mean per variant" in report and "pre-trained: 1" in report


def test_compare_prints_the_same_table(evaluation, capsys) -> None:
    settings = evaluation["settings"]
    argv = ["--experiment", "test-evaluation", "--tracking_uri", settings["tracking_uri"], "--format", "csv"]
    assert compare.run([*argv, "--parent_run_id", evaluation["parent_run_id"]]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("asset,variant,seed,mode,status,total_s")
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
