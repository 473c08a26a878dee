"""The seed's command-line contract: every flag in both spellings, clear errors, exit codes."""

import pytest

from cosmos_pipeline import cli
from cosmos_pipeline.acceleration.options import Acceleration

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
    "profile": "tiny",
    "acceleration": "fast",
    "attention": "cudnn",
    "compile": "off",
    "offload": "text_encoder",
    "vae_tiling": "on",
    "memory_budget_gib": "20",
    "cfg_parallel": "off",
}


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


def test_speed_flags_build_acceleration_options_and_leave_request_values():
    values = cli.parse_args(["--acceleration", "fast", "--offload", "text_encoder", "--prompt", "p"])
    options = cli.acceleration_options(values)
    assert options == Acceleration.preset("fast", offload="text_encoder")
    assert options.fp8_linear and options.guidance_interval == (0.25, 0.75)
    assert values["prompt"] == "p" and not set(values) & {"acceleration", *cli.ACCELERATION_FLAGS}
    assert cli.acceleration_options(cli.parse_args(["--memory_budget_gib", "20"])) == Acceleration(
        memory_budget_gib=20
    )
    assert cli.acceleration_options(cli.parse_args([])) is None  # the settings decide
