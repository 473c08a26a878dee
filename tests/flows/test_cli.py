"""The command line end to end: bad input exits 2 before anything starts; the seed script runs
through the generate flow and reruns pixel-identically."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cosmos_pipeline import cli, loading
from cosmos_pipeline.media import read_video
from flows import cli as flows_cli
from tests.conftest import ASSETS, REPO, TINY_ARGS


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(key):
        raise AssertionError("a model was loaded for bad input")

    monkeypatch.setattr(loading, "load_pipeline", refuse)


def corrupt(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return str(path)


BAD_INPUTS = {
    "missing media": (lambda t: ["--input_path", str(t / "nope.png"), "--prompt", "p"], "nope.png"),
    "unsupported suffix": (
        lambda t: ["--input_path", str(t / "a.txt"), "--prompt", "p"],
        "unsupported media suffix",
    ),
    "corrupt image": (lambda t: ["--input_path", corrupt(t, "c.png"), "--prompt", "p"], "corrupt"),
    "corrupt video": (lambda t: ["--input_path", corrupt(t, "c.mp4"), "--prompt", "p"], "corrupt"),
    "invalid json": (lambda t: ["--input_path", str(write(t / "b.json", "{oops"))], "not valid JSON"),
    "wrong types": (
        lambda t: ["--input_path", str(write(t / "b.json", '{"prompt": "p", "seed": "x"}'))],
        "`seed`",
    ),
    "no prompt": (lambda t: ["--prompt", "   "], "prompt is empty"),
    "prompt file empty": (lambda t: ["--prompt_path", str(write(t / "p.txt", "\n  \n"))], "prompt is empty"),
    "frames not 4k+1": (
        lambda t: ["--prompt", "p", "--num_output_frames", "10"],
        "nearest valid counts are 9 and 13",
    ),
    "height not x16": (lambda t: ["--prompt", "p", "--height", "100"], "100 is not a multiple of 16"),
    "width not x16": (lambda t: ["--prompt", "p", "--width", "1000"], "1000 is not a multiple of 16"),
    "output exists": (
        lambda t: ["--prompt", "p", "--output_path", str(write(t / "o.mp4", "old"))],
        "--overwrite",
    ),
    "output dir not writable": (
        lambda t: ["--prompt", "p", "--output_path", str(write(t / "file", "x") / "o.mp4")],
        "not writable",
    ),
    "png for many frames": (
        lambda t: ["--prompt", "p", "--output_path", str(t / "o.png")],
        r"should end in \.mp4",
    ),
    "mp4 for one frame": (
        lambda t: ["--prompt", "p", "--num_output_frames", "1", "--output_path", str(t / "o.mp4")],
        r"should end in \.png",
    ),
}


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_before_loading_and_writes_nothing(tmp_path, capsys, no_model_load, case):
    make_args, message = BAD_INPUTS[case]
    args = make_args(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    api_url = os.environ.get("PREFECT_API_URL")
    assert flows_cli.run([*TINY_ARGS, *args]) == cli.EXIT_INPUT
    # The stopped temporary server's address does not stay behind for later commands and their children.
    assert os.environ.get("PREFECT_API_URL") == api_url
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_seed_script_runs_and_reruns_pixel_identically(tmp_path, tracked, mlflow_client):
    """The seed's entry point, as users start it: a new process, its own temporary Prefect server."""
    script = [sys.executable, str(REPO / "scripts" / "diffusers_inference.py")]
    env = {
        **{key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"},  # its own server
        "COSMOS_TRACKING_URI": tracked["tracking_uri"],
        "COSMOS_ARTIFACT_ROOT": tracked["artifact_root"],
        "COSMOS_EXPERIMENT": tracked["experiment"],
    }
    args = [
        *TINY_ARGS,
        "--input_path",
        str(ASSETS / "text2world.json"),
        "--num-output-frames",
        "9",
        "--seed",
        "5",
    ]
    # Two users at once, each with a process and a temporary Prefect server of their own.
    started = [
        subprocess.Popen(
            [*script, *args, "--output_path", str(tmp_path / name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for name in ("a.mp4", "b.mp4")
    ]
    for process in started:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        assert "MLflow: experiment" in out
    assert not (tmp_path / "mlflow.db").exists()  # tracked where told, and no default store in the directory
    first, second = read_video(tmp_path / "a.mp4"), read_video(tmp_path / "b.mp4")
    assert first.shape == (9, 64, 112, 3)
    np.testing.assert_array_equal(first, second)
    experiment = mlflow_client.get_experiment_by_name(tracked["experiment"])
    runs = mlflow_client.search_runs([experiment.experiment_id])
    assert sorted(run.data.tags["output_path"] for run in runs) == [
        str(tmp_path / "a.mp4"),
        str(tmp_path / "b.mp4"),
    ]
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_seed_script_bad_input_is_one_paragraph_exit_2(tmp_path):
    script = [sys.executable, str(REPO / "scripts" / "diffusers_inference.py")]
    done = subprocess.run(
        [*script, "--prompt", "p", "--num_output_frames", "8"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "nearest valid counts are 5 and 9" in done.stderr


def test_help_exits_0():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "diffusers_inference.py"), "--help"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "--num_output_frames" in done.stdout


def test_an_interrupt_that_compiled_code_wraps_in_its_own_error_is_still_one_line(capsys):
    """Ctrl-C while pydantic-core runs a Python serializer (Prefect's settings load during start-up's
    imports): the handler's exception comes back as a PydanticSerializationError, which is still the
    interrupt: one line and 130, no traceback."""
    import signal

    from pydantic import BaseModel, model_serializer

    class Settings(BaseModel):
        value: int = 1

        @model_serializer(mode="wrap")
        def _ser_model(self, handler):
            signal.raise_signal(signal.SIGINT)  # the user's Ctrl-C, mid-serialization
            return handler(self)

    assert flows_cli.interruptible(lambda: Settings().model_dump() and 0) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted (SIGINT)") and err.count("\n") == 1, err
    with pytest.raises(ValueError):  # with no interrupt pending, an error stays the error
        flows_cli.interruptible(lambda: int("x"))
