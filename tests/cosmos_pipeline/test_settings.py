"""Layered settings (defaults < profile file < environment < explicit) and the requests they shape."""

import json
import sys
from pathlib import Path

import pytest

from cosmos_pipeline.errors import InputError
from cosmos_pipeline.settings import Settings, load_settings, request_rows
from cosmos_pipeline.suites import EvaluationSuite, suite_rows

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "assets"


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(
        'experiment = "from-file"\nwarm_resubmissions = 5\ngpu_slots = 2\n'
        '[request]\nmodel_id = "embedded:tiny"\nresolution = "256p"\nnum_frames = 29\n'
    )
    return path


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("COSMOS_PROFILE", "COSMOS_TRACKING_URI", "MLFLOW_TRACKING_URI", "COSMOS_EXPERIMENT"):
        monkeypatch.delenv(key, raising=False)


def test_each_layer_beats_the_one_below(profile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().experiment == "cosmos-generate"  # field default
    settings = load_settings(str(profile))
    assert (settings.experiment, settings.warm_resubmissions, settings.gpu_slots) == ("from-file", 5, 2)
    monkeypatch.setenv("COSMOS_EXPERIMENT", "from-env")
    monkeypatch.setenv("COSMOS_REQUEST__NUM_FRAMES", "9")
    settings = load_settings(str(profile))
    assert settings.experiment == "from-env"
    assert settings.request.num_frames == 9 and settings.request.model_id == "embedded:tiny"  # nested merge
    assert load_settings(str(profile), experiment="explicit").experiment == "explicit"


def test_profile_comes_from_the_environment_when_not_given(profile: Path, monkeypatch) -> None:
    monkeypatch.setenv("COSMOS_PROFILE", str(profile))
    assert load_settings().experiment == "from-file"
    assert load_settings("").experiment == "from-file"  # an unset template field is "not given"


def test_tracking_uri_honours_mlflow_variable_below_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().tracking_uri == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow-env.db")
    assert load_settings().tracking_uri == "sqlite:///mlflow-env.db"
    monkeypatch.setenv("COSMOS_TRACKING_URI", "sqlite:///cosmos-env.db")
    assert load_settings().tracking_uri == "sqlite:///cosmos-env.db"
    assert load_settings(tracking_uri="sqlite:///explicit.db").tracking_uri == "sqlite:///explicit.db"


def test_unknown_profile_names_the_available_ones() -> None:
    with pytest.raises(InputError, match=r"profile 'nope' not found.*tiny"):
        load_settings("nope")


def test_bad_value_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSMOS_WARM_RESUBMISSIONS", "many")
    with pytest.raises(InputError, match="warm_resubmissions"):
        load_settings()


def test_settings_never_read_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["flow", "--experiment", "from-argv", "--bogus"])
    assert load_settings().experiment == "cosmos-generate"


@pytest.mark.parametrize("name", ["default", "tiny", "h100"])
def test_shipped_profiles_load(name: str) -> None:
    assert load_settings(name).profile == name


def test_profile_request_defaults_sit_below_bundle_and_flags(profile: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b.json"
    bundle.write_text(json.dumps({"prompt": "a robot", "num_output_frames": 9, "name": "b"}))
    settings = load_settings(str(profile), output_dir=str(tmp_path))
    [row] = request_rows({"input_path": str(bundle)}, settings)
    request = row.request
    assert request is not None
    assert request.model_id == "embedded:tiny"  # profile
    assert (request.height, request.width) == (256, 448)  # profile resolution
    assert request.num_frames == 9  # the bundle beats the profile
    [row] = request_rows({"input_path": str(bundle), "num_output_frames": 13, "height": 128}, settings)
    assert row.request is not None
    assert row.request.num_frames == 13  # a flag beats the bundle
    assert (row.request.height, row.request.width) == (128, 448)  # an explicit size beats the resolution


def test_rows_report_every_bad_row(tmp_path: Path) -> None:
    bundle = tmp_path / "batch.jsonl"
    lines = [
        {"name": "good", "prompt": "a robot"},
        {"name": "frames", "prompt": "a robot", "num_output_frames": 30},
        {"name": "empty", "prompt": "  ", "height": 100},
    ]
    bundle.write_text("\n".join(json.dumps(line) for line in lines))
    rows = request_rows({"input_path": str(bundle)}, load_settings(output_dir=str(tmp_path)))
    assert [row.request is not None for row in rows] == [True, False, False]
    assert {(p.row, p.field) for row in rows for p in row.problems} == {
        (2, "num_frames"),
        (3, "prompt"),
        (3, "height"),
    }


@pytest.mark.parametrize("bundle", ["text2world.json", "image2world.json", "video2world.json", "batch.jsonl"])
def test_settings_rows_match_the_core_without_profile_defaults(bundle: str, tmp_path: Path) -> None:
    from cosmos_pipeline import bundle as core

    flags = {"input_path": str(ASSETS / bundle), "output_path": str(tmp_path), "seed": 5}
    ours = [row.request for row in request_rows(flags, load_settings())]
    theirs = [row.request for row in core.request_rows(flags)]
    assert [r.model_dump() for r in ours] == [r.model_dump() for r in theirs]


def test_shipped_suites_load_with_assets_relative_to_the_file() -> None:
    for name in ("variants", "tiny"):
        suite = EvaluationSuite.load(REPO / "configs" / "eval" / f"{name}.toml")
        assert {v.revision for v in suite.variants} == {
            "diffusers/base/pre-trained",
            "diffusers/base/post-trained",
        }
        assert all(asset.is_file() for asset in suite.assets), suite.assets


def test_suite_rows_are_grouped_by_variant(tmp_path: Path) -> None:
    suite_file = tmp_path / "suite.toml"
    suite_file.write_text(
        f'assets = ["{ASSETS / "text2world.json"}", "{ASSETS / "image2world.json"}"]\nseeds = [0, 1]\n'
        "[overrides]\nnum_output_frames = 9\n"
        '[[variants]]\nlabel = "a"\nmodel_id = "embedded:tiny"\nrevision = "diffusers/base/pre-trained"\n'
        '[[variants]]\nlabel = "b"\nmodel_id = "embedded:tiny"\nrevision = "diffusers/base/post-trained"\n'
    )
    suite = EvaluationSuite.load(suite_file)
    rows = suite_rows(suite, load_settings(), tmp_path / "out")
    revisions = [row.request.revision for row in rows if row.request is not None]
    assert len(rows) == 8 and [row.index for row in rows] == list(range(1, 9))
    assert revisions == ["diffusers/base/pre-trained"] * 4 + ["diffusers/base/post-trained"] * 4
    outputs = {str(row.request.output_path) for row in rows if row.request is not None}
    assert (
        len(outputs) == 8 and str(tmp_path / "out" / "b" / "seed-1" / "image2world_robot_arm.mp4") in outputs
    )


def test_suite_with_duplicate_labels_is_refused(tmp_path: Path) -> None:
    suite_file = tmp_path / "suite.toml"
    variant = (
        '[[variants]]\nlabel = "a"\nmodel_id = "embedded:tiny"\nrevision = "diffusers/base/pre-trained"\n'
    )
    suite_file.write_text(f'assets = ["x.json"]\nseeds = [0]\n{variant}{variant}')
    with pytest.raises(InputError, match="labels must differ"):
        EvaluationSuite.load(suite_file)


def test_default_profile_shows_every_default_as_the_code_states_it() -> None:
    from cosmos_pipeline.settings import default_profile

    assert (REPO / "configs" / "default.toml").read_text() == default_profile(), (
        "regenerate it: python -m cosmos_pipeline.settings > configs/default.toml"
    )
    assert load_settings("default") == Settings()  # nothing in it is set


def test_cli_help_states_the_request_defaults() -> None:
    from cosmos_pipeline.cli import build_parser
    from cosmos_pipeline.request import GenerationRequest

    text = " ".join(build_parser().format_help().split())
    fields = GenerationRequest.model_fields
    for flag, field in (("denoising steps", "num_inference_steps"), ("4k+1", "num_frames"),
                        ("guidance scale", "guidance_scale"), ("weights precision", "dtype")):  # fmt: skip
        assert f"(default {fields[field].default})" in text.split(flag, 1)[1][:160], flag
