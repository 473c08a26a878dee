"""The one batch check: every problem of every row, under the names people type, policy before files."""

import json
from pathlib import Path

import pytest

from cosmos_pipeline.batch import check_batch
from cosmos_pipeline.policy import Policy
from cosmos_pipeline.settings import load_settings, request_rows
from tests.conftest import ASSETS


def write_batch(path: Path, lines: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(line) for line in lines))
    return path


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings(output_dir=str(tmp_path / "out"))


def test_bad_batch_names_each_row_and_field_once(tmp_path: Path, settings) -> None:
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    batch = write_batch(
        tmp_path / "batch.jsonl",
        [
            {"name": "fine", "prompt": "a robot"},
            {"name": "frames", "prompt": "a robot", "num_output_frames": 30},
            {"name": "twin", "prompt": "a robot", "guidance": "nan"},
            {"name": "twin", "prompt": "a robot", "input_path": "missing.png"},
            {"name": "media", "prompt": "a robot", "input_path": "broken.mp4"},
            {"name": "typo", "promt": "a robot", "num_steps": 5000},
        ],
    )
    report = check_batch(request_rows({"input_path": str(batch)}, settings), settings.policy)
    assert not report.ok and report.requests == []
    assert report.failed_rows == [2, 3, 4, 5, 6]
    found = [(p.row, p.field) for p in report.problems]
    assert len(found) == len(set(found))  # once each
    assert {(2, "num_output_frames"), (3, "guidance"), (4, "input_path"), (5, "input_path"), (6, "num_steps"),
            (6, "promt"), (6, "prompt")} <= set(found)  # fmt: skip
    summary = report.summary()
    assert summary.startswith("5 of 6 request(s) invalid:")
    assert "row 3 (twin): `guidance`: must be a finite number" in summary
    assert "row 4 (twin): `input_path`: input media" in summary and "missing.png" in summary
    assert "`num_steps`:" in summary and "(got 5000)" in summary
    assert "did you mean `prompt`?" in summary
    assert "| 5 | media | `input_path` |" in report.markdown()


def test_two_rows_writing_one_output_are_both_named(tmp_path: Path, settings) -> None:
    batch = write_batch(
        tmp_path / "b.jsonl", [{"name": "same", "prompt": "a"}, {"name": "same", "prompt": "b"}]
    )
    report = check_batch(request_rows({"input_path": str(batch)}, settings), settings.policy)
    assert [(p.row, p.field) for p in report.problems] == [(1, "output_path"), (2, "output_path")]
    assert "rows [1, 2] would all write" in report.problems[0].message


def test_one_request_is_one_line(settings) -> None:
    report = check_batch(request_rows({"prompt": "p", "num_output_frames": 8}, settings), settings.policy)
    assert report.summary().count("\n") == 0 and "`num_output_frames`: 8 frames" in report.summary()


def test_assets_pass(settings) -> None:
    for bundle in ("text2world.json", "image2world.json", "video2world.json", "batch.jsonl"):
        rows = request_rows({"input_path": str(ASSETS / bundle), "num_output_frames": 29}, settings)
        report = check_batch(rows, settings.policy)
        assert report.ok, report.summary()
        assert len(report.requests) == len(rows)


def test_policy_is_checked_before_media_is_read(tmp_path: Path, settings) -> None:
    rows = request_rows({"input_path": str(ASSETS / "image2world.json")}, settings)
    report = check_batch(rows, Policy(input_roots=(tmp_path,)))
    assert [(p.row, p.field) for p in report.problems] == [(1, "policy")]
    assert "outside the allowed input folders" in report.problems[0].message
