"""Batch validation: every failing row and field in one report, GX over the batch, policy first."""

import json
from pathlib import Path

import pytest

from cosmos_pipeline.policy import Policy
from cosmos_pipeline.settings import load_settings, request_rows
from tasks.validate import validate_rows
from tests.conftest import ASSETS


def write_batch(path: Path, lines: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(line) for line in lines))
    return path


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings(output_dir=str(tmp_path / "out"))


def test_bad_batch_names_each_row_and_field(tmp_path: Path, settings) -> None:
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    batch = write_batch(
        tmp_path / "batch.jsonl",
        [
            {"name": "fine", "prompt": "a robot"},
            {"name": "frames", "prompt": "a robot", "num_output_frames": 30},
            {"name": "twin", "prompt": "a robot", "guidance": 50},
            {"name": "twin", "prompt": "a robot", "input_path": "missing.png"},
            {"name": "media", "prompt": "a robot", "input_path": "broken.mp4", "num_steps": 500},
        ],
    )
    report = validate_rows(request_rows({"input_path": str(batch)}, settings), settings.policy)
    assert not report.ok
    assert report.failed_rows == [2, 3, 4, 5]
    found = {(p.row, p.field) for p in report.problems}
    assert {
        (2, "num_frames"),
        (3, "guidance_scale"),
        (3, "name"),
        (4, "name"),
        (3, "output_path"),
        (4, "input_path"),
        (5, "input_path"),
        (5, "num_inference_steps"),
    } <= found
    assert not any(p.row == 1 for p in report.problems)
    summary = report.summary()
    assert "row 4 (twin): `input_path`: input media missing" in summary
    assert "missing.png" in summary and "(got 500)" in summary
    assert "| 5 | media | `num_inference_steps` |" in report.markdown()
    assert report.expectations is not None and report.expectations["success"] is False


def test_assets_pass(settings) -> None:
    for bundle in ("text2world.json", "image2world.json", "video2world.json", "batch.jsonl"):
        rows = request_rows({"input_path": str(ASSETS / bundle), "num_output_frames": 29}, settings)
        report = validate_rows(rows, settings.policy)
        assert report.ok, report.summary()
        assert report.expectations is not None and report.expectations["success"] is True


def test_policy_is_checked_before_media_is_read(tmp_path: Path, settings) -> None:
    rows = request_rows({"input_path": str(ASSETS / "image2world.json")}, settings)
    report = validate_rows(rows, Policy(input_roots=(tmp_path,)))
    assert [(p.row, p.field) for p in report.problems] == [(1, "policy")]
    assert "outside the allowed input folders" in report.problems[0].message
    assert report.expectations is None  # the row never reached the suite (nothing was decoded)
