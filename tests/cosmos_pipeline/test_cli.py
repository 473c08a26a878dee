"""The seed's command-line contract: every flag in both spellings, clear errors, exit codes."""

import subprocess
import sys

import numpy as np
import pytest

from cosmos_pipeline import cli, loading
from cosmos_pipeline.media import read_video

from .conftest import ASSETS, REPO

SEED_FLAGS = {
    "input_path": "x.json",
    "override_visual_input": "v.mp4",
    "output_path": "o.mp4",
    "num_output_frames": "9",
    "prompt": "p",
    "prompt_path": "p.txt",
    "negative_prompt": "n",
    "negative_prompt_path": "n.txt",
    "model_id": "m",
    "revision": "r",
    "device": "cpu",
    "device_map": "balanced",
    "seed": "1",
    "num_steps": "2",
}
EXTRA_FLAGS = {
    "resolution": "480p",
    "height": "64",
    "width": "112",
    "fit": "stretch",
    "guidance": "3.0",
    "num_latent_conditional_frames": "1",
    "dtype": "float32",
    "guardrail": "off",
    "name": "n",
    "chunk_size": "77",
    "chunk_overlap": "1",
    "lora_path": "adapter",
    "lora_scale": "0.5",
}
TINY_ARGS = [
    "--model_id",
    "embedded:tiny",
    "--height",
    "64",
    "--width",
    "112",
    "--num_steps",
    "2",
    "--device",
    "cpu",
]


@pytest.mark.parametrize("flag", [*SEED_FLAGS, *EXTRA_FLAGS])
def test_every_flag_accepts_both_spellings(flag):
    value = {**SEED_FLAGS, **EXTRA_FLAGS}[flag]
    underscore = cli.parse_args([f"--{flag}", value])[flag]
    dash = cli.parse_args([f"--{flag.replace('_', '-')}", value])[flag]
    assert underscore == dash is not None


def test_flags_not_given_are_none_so_bundles_show_through():
    values = cli.parse_args([])
    assert set(values) >= set(SEED_FLAGS) and all(v is None for v in values.values())
    for switch in ("overwrite", "skip_existing", "keep_going"):
        assert cli.parse_args([f"--{switch.replace('_', '-')}"])[switch] is True
        assert cli.parse_args([f"--{switch}"])[switch] is True


def test_help_documents_every_flag():
    text = cli.build_parser().format_help()
    for flag in [*SEED_FLAGS, *EXTRA_FLAGS, "overwrite", "skip_existing", "keep_going"]:
        assert f"--{flag}" in text and f"--{flag.replace('_', '-')}" in text


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
    assert cli.run([*TINY_ARGS, *args]) == cli.EXIT_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_seed_script_runs_and_reruns_pixel_identically(tmp_path):
    script = [sys.executable, str(REPO / "scripts" / "diffusers_inference.py")]
    args = [
        *TINY_ARGS,
        "--input_path",
        str(ASSETS / "text2world.json"),
        "--num-output-frames",
        "9",
        "--seed",
        "5",
    ]
    for name in ("a.mp4", "b.mp4"):
        done = subprocess.run(
            [*script, *args, "--output_path", str(tmp_path / name)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    first, second = read_video(tmp_path / "a.mp4"), read_video(tmp_path / "b.mp4")
    assert first.shape == (9, 64, 112, 3)
    np.testing.assert_array_equal(first, second)


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
