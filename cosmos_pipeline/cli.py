"""The command line's flags: the seed script's (both spellings), plus what native Cosmos users expect.

Parsing and exit codes live here; `flows.cli` runs what was asked as a Prefect flow. Exit codes:
0 success, 2 bad input (nothing loaded, nothing written), 3 guardrail refusal or guardrail
unavailable, 1 any other failure. Errors are one paragraph, never a traceback.
"""

import argparse
from collections.abc import Sequence
from typing import Any, get_args

from cosmos_pipeline.acceleration.options import Acceleration, AttentionKernel, Offload
from cosmos_pipeline.bundle import DEFAULT_OUTPUT_DIR
from cosmos_pipeline.errors import GuardrailUnavailableError, InputError
from cosmos_pipeline.request import MAX_WINDOW_FRAMES, RESOLUTIONS, Dtype, GenerationRequest

EXIT_OK, EXIT_FAILURE, EXIT_INPUT, EXIT_GUARDRAIL = 0, 1, 2, 3


def default(field: str) -> str:
    """A request field's default, as help text shows it: stated once, in `GenerationRequest`."""
    return str(GenerationRequest.model_fields[field].default)


def option(name: str) -> str:
    """An acceleration option's default (`Acceleration`)."""
    return str(Acceleration.model_fields[name].default)


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """Add `--a_b` with its `--a-b` twin (the seed accepts both)."""
    spellings = dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}"])
    parser.add_argument(*spellings, dest=name, default=None, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosmos-generate",
        description=(
            "Generate worlds (videos) or images with NVIDIA Cosmos-Predict2.5 through diffusers. "
            "Flags override values from a bundle, which override the settings profile's [request] "
            "defaults (e.g. --profile tiny), which override the defaults shown here. "
            "Use --model_id embedded:tiny to run the offline embedded model."
        ),
    )
    inputs = parser.add_argument_group("inputs")
    _flag(
        inputs, "input_path", metavar="PATH", help="a .json/.jsonl bundle, or an image/video to condition on"
    )
    _flag(
        inputs,
        "override_visual_input",
        metavar="PATH",
        help="image/video that replaces the bundle's input_path",
    )
    _flag(inputs, "prompt", help="the prompt text (overrides the bundle's prompt)")
    _flag(inputs, "prompt_path", metavar="PATH", help="a text file holding the prompt (stripped)")
    _flag(inputs, "negative_prompt", help="negative prompt (default: the bundle's, else the pipeline's own)")
    _flag(inputs, "negative_prompt_path", metavar="PATH", help="a text file holding the negative prompt")
    _flag(inputs, "name", help="names the run and the default output file")

    output = parser.add_argument_group("output")
    _flag(
        output,
        "output_path",
        metavar="PATH",
        help="output file (.mp4 for video, .png for one frame), or a folder for many requests "
        f"(default: {DEFAULT_OUTPUT_DIR}/<name>.<mp4|png>)",
    )
    _flag(output, "overwrite", action="store_true", help="replace an existing output file")
    _flag(
        output,
        "num_output_frames",
        type=int,
        metavar="N",
        help=f"frames to generate, 4k+1 (default {default('num_frames')}); 1 = image",
    )
    _flag(
        output,
        "resolution",
        choices=list(RESOLUTIONS),
        help="named size: "
        + ", ".join(f"{name} = {h}x{w}" for name, (h, w) in RESOLUTIONS.items())
        + f" (default {default('height')}x{default('width')})",
    )
    _flag(output, "height", type=int, help="output height, a multiple of 16 (overrides --resolution)")
    _flag(output, "width", type=int, help="output width, a multiple of 16 (overrides --resolution)")
    _flag(
        output,
        "fit",
        choices=["crop", "stretch"],
        help="fit input media to the output size: crop keeps the aspect ratio, stretch is upstream's "
        f"(default {default('fit')})",
    )

    _flag(
        output,
        "chunk_size",
        type=int,
        metavar="N",
        help=f"long videos (more than {MAX_WINDOW_FRAMES} frames): frames per chained window, 4k+1 "
        f"(default {default('chunk_size')})",
    )
    _flag(
        output,
        "chunk_overlap",
        type=int,
        choices=[1, 2],
        help="long videos: latent frames each window takes from the previous one "
        f"(default {default('chunk_overlap')})",
    )

    batch = parser.add_argument_group("batch")
    _flag(
        batch,
        "skip_existing",
        action="store_true",
        help="skip requests whose output exists with the same request key (see the .json sidecar)",
    )
    _flag(
        batch,
        "keep_going",
        action="store_true",
        help="continue past a failing request; report every failure at the end (exit code 1)",
    )

    sampling = parser.add_argument_group("sampling")
    _flag(sampling, "seed", type=int, help="random seed (default: chosen and reported)")
    _flag(
        sampling,
        "num_steps",
        type=int,
        metavar="N",
        help=f"denoising steps (default {default('num_inference_steps')})",
    )
    _flag(
        sampling,
        "guidance",
        type=float,
        metavar="SCALE",
        help=f"classifier-free guidance scale; 1 or less turns it off (default {default('guidance_scale')})",
    )
    _flag(
        sampling,
        "num_latent_conditional_frames",
        type=int,
        choices=[1, 2],
        help="Video2World: latent frames of the input kept as condition, 1 = the last frame, 2 = the last 5 "
        f"(default {default('num_latent_conditional_frames')})",
    )

    model = parser.add_argument_group("model")
    _flag(
        model,
        "model_id",
        help="hub id, local diffusers folder, a native checkpoint (.pt, or a DCP folder) from NVIDIA's "
        f"post-training, or embedded:tiny (default {default('model_id')})",
    )
    _flag(
        model,
        "revision",
        help=f"hub revision (default {default('revision')}; or diffusers/base/pre-trained; or distilled: "
        "NVIDIA's 4-step distilled 2B, Text2World)",
    )
    _flag(
        model,
        "base_model_id",
        help="where a native checkpoint's text encoder, VAE and scheduler come from (default: the hub 2B "
        "or 14B, by the checkpoint's size)",
    )
    _flag(
        model,
        "distilled_conditioning",
        action="store_true",
        help="allow an image or video input with --revision distilled (NVIDIA documents Text2World only)",
    )
    _flag(
        model,
        "lora_path",
        metavar="PATH",
        help="a LoRA adapter for the transformer: diffusers format, or a native LoRA run's checkpoint",
    )
    _flag(
        model,
        "lora_scale",
        type=float,
        help=f"strength of the LoRA adapter (default {default('lora_scale')})",
    )
    _flag(
        model,
        "lora_alpha",
        type=float,
        help="a native LoRA checkpoint's alpha, when its training set one other than the rank",
    )
    _flag(model, "device", help=f"torch device (default {default('device')}, falling back to cpu)")
    _flag(model, "device_map", help="diffusers device map, e.g. balanced to shard over several GPUs")
    _flag(
        model,
        "cfg_parallel",
        help="auto: each step's unconditional forward on a second GPU when there is one; off; or a device",
    )
    _flag(
        model,
        "dtype",
        choices=list(get_args(Dtype)),
        help=f"weights precision; auto = float32 on a CPU, bfloat16 on a GPU (default {default('dtype')})",
    )
    _flag(
        model,
        "guardrail",
        choices=["auto", "on", "off"],
        help="Cosmos guardrail: auto = on for real models, off for the embedded one "
        f"(default {default('guardrail')})",
    )
    speed = parser.add_argument_group("speed and memory (GPU)")
    _flag(
        speed,
        "acceleration",
        choices=["default", "fast", "plain", "low-memory"],
        help="default: exact, compiled, fastest exact attention (automatic); fast: FP8 attention and "
        "linears, guidance interval, step reuse (output drifts); plain: the diffusers call as-is; "
        "low-memory: model CPU offload + tiled VAE",
    )
    _flag(
        speed,
        "attention",
        choices=list(get_args(AttentionKernel)),
        help=f"attention kernel (default {option('attention')})",
    )
    _flag(
        speed,
        "compile",
        choices=["auto", "on", "off"],
        help=f"torch.compile the transformer blocks (default {option('compile')})",
    )
    _flag(
        speed,
        "offload",
        choices=list(get_args(Offload)),
        help="auto: offload the text encoder only when memory demands it; text_encoder; model; none "
        f"(default {option('offload')})",
    )
    _flag(
        speed,
        "vae_tiling",
        choices=["auto", "on", "off"],
        help=f"tiled VAE decode; auto = when memory is short (default {option('vae_tiling')})",
    )
    _flag(
        speed, "memory_budget_gib", type=float, metavar="GIB", help="plan for this much GPU memory (e.g. 20)"
    )
    settings = parser.add_argument_group("settings")
    _flag(
        settings,
        "profile",
        help="settings profile: configs/<profile>.toml or a path (default: COSMOS_PROFILE)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Flag values by name; None for a flag that was not given (so bundle values can show through)."""
    return vars(build_parser().parse_args(argv))


def split_run_options(values: dict[str, Any]) -> tuple[dict[str, Any], bool, bool]:
    """Request values, then the batch options --skip_existing and --keep_going."""
    values = dict(values)
    return values, bool(values.pop("skip_existing", None)), bool(values.pop("keep_going", None))


ACCELERATION_FLAGS = ("attention", "compile", "offload", "vae_tiling", "memory_budget_gib")


def acceleration_options(values: dict[str, Any]) -> Acceleration | None:
    """Pop the speed and memory flags from `values`; None when none was given (the settings decide)."""
    preset = values.pop("acceleration", None)
    overrides = {name: value for name in ACCELERATION_FLAGS if (value := values.pop(name, None)) is not None}
    if preset is None and not overrides:
        return None
    return Acceleration.preset(preset or "default", **overrides)


def error_exit_code(error: Exception) -> int:
    """The exit code for an error raised while running requests."""
    from cosmos_pipeline.generate import UnsafeContentError

    if isinstance(error, InputError):
        return EXIT_INPUT
    if isinstance(error, GuardrailUnavailableError | UnsafeContentError):
        return EXIT_GUARDRAIL
    return EXIT_FAILURE
