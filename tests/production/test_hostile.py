"""Hostile deployment parameters: whatever a caller sends, the run gets confined, valid requests or a clear
error naming what is wrong, never a traceback, never a file read outside the input roots, never the
operator's settings loosened. And secrets are masked wherever something is recorded.

The parameters go through what the `generate` flow runs before any GPU time (settings for untrusted
parameters, bundle resolution, the validation that a deployment run does), without starting a flow
per example; tests/production/test_stack.py sends hostile parameters through real deployments.
"""

import json
import logging
import os
import string

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from cosmos_pipeline.batch import check_batch
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.settings import load_settings, request_rows
from tasks.resolve import run_settings
from tasks.scrub import MASK, ScrubFilter, scrub, scrub_value

SECRET = "SECRET-CONTENT-never-to-be-read"


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory):
    """Input and output roots with a valid bundle, a folder of bundles, and traps pointing outside."""
    top = tmp_path_factory.mktemp("hostile")
    inputs, outputs, outside = top / "inputs", top / "outputs", top / "outside"
    for folder in (inputs, outputs, outside, inputs / "batch"):
        folder.mkdir()
    Image.new("RGB", (64, 48), "red").save(inputs / "robot.png")
    (inputs / "ok.json").write_text(json.dumps({"prompt": "a robot", "input_path": "robot.png"}))
    (inputs / "batch" / "a.jsonl").write_text('{"name": "a", "prompt": "x"}\n{"name": "b", "prompt": "y"}\n')
    (outside / "secret.txt").write_text(SECRET)
    (outside / "secret.json").write_text(json.dumps({"prompt": SECRET}))
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    os.symlink(outside / "secret.txt", inputs / "link.txt")
    os.symlink(outside / "secret.json", inputs / "link.json")
    return inputs, outputs, outside


@pytest.fixture
def operator(roots, monkeypatch: pytest.MonkeyPatch):
    """The worker's environment, as prefect.yaml and the stack give it."""
    inputs, outputs, _ = roots
    monkeypatch.setenv("COSMOS_PROFILE", "production")
    monkeypatch.setenv("COSMOS_POLICY__INPUT_ROOTS", json.dumps([str(inputs)]))
    monkeypatch.setenv("COSMOS_POLICY__OUTPUT_ROOT", str(outputs))
    monkeypatch.setenv("COSMOS_OUTPUT_DIR", str(outputs))
    return load_settings(None)


def plan(profile, settings_parameter, input_path, overrides):
    """What the generate flow does with its parameters before any GPU time, as a deployment run."""
    config = run_settings(profile, settings_parameter, untrusted=True)
    rows = request_rows({**overrides, "input_path": input_path or None}, config)
    return config, rows, check_batch(rows, config.policy)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
PATHS_IN_INPUTS = {"ok.json", "batch", "robot.png", "link.json", "link.txt", "../outside/secret.json",
                   "../outside/secret.png", "batch/../../outside/secret.json", "..", "nope.json"}  # fmt: skip
PATHS = st.sampled_from(sorted(PATHS_IN_INPUTS | {"/etc/passwd", "/etc/hostname.png", ""}))
KEYS = st.sampled_from([
    "prompt", "prompt_path", "negative_prompt", "negative_prompt_path", "override_visual_input",
    "output_path", "name", "num_output_frames", "num_steps", "guidance", "seed", "resolution", "height",
    "width", "model_id", "revision", "lora_path", "lora_scale", "device", "overwrite", "chunk_size", "dtype",
    "guardrail",
])  # fmt: skip
PROFILE_NAMES = ["tiny", "h100", "default", "production", "../configs/tiny", "/etc/x.toml", "nope", ""]


def mostly(common, rare):
    """`common` seven times in ten: most examples get far enough to be accepted or refused row by row."""
    return st.integers(0, 9).flatmap(lambda n: common if n < 7 else rare)


PROFILES = mostly(
    st.sampled_from([None, "tiny"]), st.sampled_from(PROFILE_NAMES) | st.text(string.printable, max_size=12)
)
SETTINGS = mostly(st.none(), st.dictionaries(
    st.sampled_from(["experiment", "request", "acceleration", "policy", "tracking_uri", "output_dir",
                     "artifact_root", "spool_dir", "warm_workers", "warm_resubmissions"]),
    JSON | st.just({"input_roots": None}) | st.just({"model_id": "embedded:tiny"}),
    max_size=2,
))  # fmt: skip
VALUES = mostly(PATHS | st.sampled_from(["a robot", 9, 5, 1, 64, "256p"]), JSON)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    profile=PROFILES,
    settings_parameter=SETTINGS,
    input_path=mostly(st.sampled_from(["ok.json", "batch", "robot.png", ""]), PATHS),
    overrides=st.dictionaries(KEYS, VALUES, max_size=4),
)
def test_any_deployment_parameters_give_confined_requests_or_a_clear_error(
    roots, operator, profile, settings_parameter, input_path, overrides
) -> None:
    inputs, outputs, _ = roots
    overrides = {key: str(inputs / value) if key.endswith(("_path", "_input")) and isinstance(value, str)
                 and value in PATHS_IN_INPUTS else value for key, value in overrides.items()}  # fmt: skip
    try:
        config, rows, report = plan(
            profile, settings_parameter, input_path and str(inputs / input_path), overrides
        )
    except InputError as error:
        assert str(error).strip() and "Traceback" not in str(error) and SECRET not in str(error)
        event("refused as a whole")
        return
    # The operator's settings stay, whatever the parameters asked for.
    assert (config.policy, config.tracking_uri, config.output_dir) == (
        operator.policy,
        operator.tracking_uri,
        operator.output_dir,
    )
    assert SECRET not in report.summary()
    for row in rows:
        if row.request is None or row.index in report.failed_rows:
            event("a row refused")
            assert row.index in report.failed_rows and all(p.message.strip() for p in report.problems)
            continue
        event("a request accepted")
        request = row.request
        assert SECRET not in request.prompt and SECRET not in (request.negative_prompt or "")
        assert request.output_path.resolve().is_relative_to(outputs.resolve())
        for path in (request.input_path, request.lora_path):
            assert path is None or path.resolve().is_relative_to(inputs.resolve())


@pytest.mark.parametrize(
    ("profile", "settings_parameter", "message"),
    [
        ("/etc/cosmos.toml", None, "must be the name of a profile in configs/"),
        ("../configs/tiny", None, "must be the name of a profile in configs/"),
        (
            None,
            {"policy": {"input_roots": None}},
            "settings ['policy'] cannot be set by a deployment's parameters",
        ),
        (None, {"tracking_uri": "sqlite:////tmp/elsewhere.db"}, "settings ['tracking_uri'] cannot be set"),
        (None, {"output_dir": "/tmp"}, "settings ['output_dir'] cannot be set"),
    ],
)
def test_deployment_parameters_cannot_loosen_the_operators_settings(
    operator, profile, settings_parameter, message
) -> None:
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_settings(profile, settings_parameter, untrusted=True)


def test_a_deployment_run_may_choose_request_defaults_and_experiments(operator) -> None:
    chosen = {"experiment": "mine", "request": {"num_frames": 9}, "acceleration": {"vae_tiling": "on"}}
    config = run_settings("tiny", chosen, untrusted=True)
    assert config.request.model_id == "embedded:tiny" and config.request.num_frames == 9  # from tiny + caller
    assert config.acceleration.vae_tiling == "on"
    assert config.experiment == "mine" and config.profile == "tiny"
    assert config.policy == operator.policy and config.tracking_uri == operator.tracking_uri
    # A local call (the CLI, a flow called from Python) is the user's own: everything may be set.
    assert run_settings(None, {"policy": {"input_roots": None}}, untrusted=False).policy.input_roots is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://mlflow:hunter2@db:5432/mlflow", f"postgresql://mlflow:{MASK}@db:5432/mlflow"),
        ("https://user:tok-123@mlflow.example.com", f"https://user:{MASK}@mlflow.example.com"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz0123456789", f"HF_TOKEN={MASK}"),
        ("use hf_abcdefghijklmnopqrstuvwxyz0123456789 please", f"use {MASK} please"),
        ("key AKIAABCDEFGHIJKLMNOP here", f"key {MASK} here"),
        ("https://h/x?api_key=abc123&page=2", f"https://h/x?api_key={MASK}&page=2"),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz", f"Authorization: Bearer {MASK}"),
        ("a robot holds a token: a gold coin", "a robot holds a token: a gold coin"),  # prompts stay readable
    ],
)
def test_scrub_masks_credentials_and_tokens(text, expected) -> None:
    assert scrub(text) == expected


def test_scrub_value_masks_secret_keys_in_nested_records() -> None:
    record = {"settings": {"tracking_uri": "http://a:b@c", "hf_token": "x", "gpu_slots": 2}, "items": ["u:v"]}
    assert scrub_value(record) == {
        "settings": {"tracking_uri": f"http://a:{MASK}@c", "hf_token": MASK, "gpu_slots": 2},
        "items": ["u:v"],
    }


def test_log_records_are_scrubbed_before_any_handler_sees_them(caplog) -> None:
    logger = logging.getLogger("cosmos.test.scrub")
    caplog.handler.addFilter(ScrubFilter())
    with caplog.at_level(logging.INFO, logger="cosmos.test.scrub"):
        logger.info("tracking %s", "postgresql://u:hunter2@db/mlflow")
    assert caplog.messages == [f"tracking postgresql://u:{MASK}@db/mlflow"]
