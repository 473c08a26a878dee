"""The toy world's scripts, as the GPU calls use them: a stage fitted to the call's deadline, and an
evaluation on a given device that, interleaved, covers every case however early it is stopped."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train, evaluate = load("train_toyworld"), load("evaluate_toyworld")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A smoke training whose pretrain stage is fitted to a deadline that the later stages' budgets
    (60 s each in the smoke setting) already overrun: (checkpoints, exported model)."""
    root = tmp_path_factory.mktemp("toyworld-scripts")
    argv = ["--smoke", "--checkpoints", str(root / "ckpt"), "--fit", "pretrain", "--deadline", "100"]
    assert train.main([*argv, "--export", str(root / "model")]) == 0
    return root / "ckpt", root / "model"


def test_a_fitted_stage_leaves_the_later_stages_their_budgets(fitted):
    checkpoints, _ = fitted
    stages = json.loads((checkpoints / "state.json").read_text())["stages"]
    assert stages["pretrain"]["budget"] == 1.0 and stages["pretrain"]["done"]  # the floor: no time was left
    assert stages["posttrain"]["budget"] == train.SMOKE.posttrain.seconds == stages["lora"]["budget"]


def test_an_interleaved_evaluation_takes_every_case_prompt_by_prompt(fitted, tmp_path, capsys):
    _, model = fitted
    sizes = ["--height", "64", "--width", "112", "--frames", "5", "--steps", "2"]
    counts = ["--prompts", "2", "--domain_prompts", "1", "--image_prompts", "1"]
    argv = ["--model_root", str(model), "--device", "cpu", "--interleave", "--out", str(tmp_path)]
    summary = evaluate.main([*argv, *sizes, *counts])
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    names = [case.name for case in evaluate.CASES]
    first = [case.name for case in evaluate.CASES if case.prompts == "heldout"]
    assert [(row["case"], row["seed"]) for row in rows] == [(n, 0) for n in names] + [(n, 1) for n in first]
    assert {name: figures["samples"] for name, figures in summary.items()} == {
        name: 2.0 if name in first else 1.0 for name in names
    }
    assert all(0 <= row["toy_adherence"] <= 1 for row in rows)
    assert "toy_conditioning_psnr" in rows[-len(first) - 1] and "| case |" in capsys.readouterr().out
