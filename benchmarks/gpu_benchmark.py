"""GPU benchmark: Cosmos-Predict2.5 at its real shapes, random bf16 weights, through the project's own code.

Nothing is downloaded: every component is built from its config on the meta device and its weights
are drawn on the GPU (std 1/sqrt(fan_in), norms 1, biases 0). The pipeline is then accelerated with
`cosmos_pipeline.acceleration.apply_acceleration(pipe, options, device=...)`, the call `loading.py`
makes after `from_pretrained`, and run with `cosmos_pipeline.generate.generate`.

Sections (each writes OUT/SECTION.json; the tables print last):
  check      tiny model on the GPU (default vs plain, fast levers) and the kernels against exact math
  attention  attention kernels at the transformer's self-attention shape
  forward    seconds per transformer forward for each lever combination
  vae        VAE decode, untiled and tiled: time and peak memory
  pipeline   side by side on one seed: the plain diffusers call (baseline), default and fast mode, then
             the memory options; a few steps each, extrapolated to 36
  full       full 36-step runs of the default and the fast mode, and the fast mode's drift
  drift      each fast-mode lever's drift against the default mode at 256p over 36 steps
  fp8diag    the FP8 attention kernels on the first block's own inputs
  distilled  the distilled 2B's 4-step Text2World video end to end beside the default mode's 36-step one

The commands behind benchmarks/RESULTS.md are listed there, e.g. the side-by-side table:
  python3 benchmarks/gpu_benchmark.py forward pipeline --variants plain fp8-attention fp8-attention-eager \
      fast --fast-attention auto --steps 2 --model 2B --out $OUT
  python benchmarks/gpu_benchmark.py --scale tiny check forward pipeline drift   # CPU smoke run
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmos_pipeline.acceleration.apply import accelerate_transformer, apply_acceleration  # noqa: E402
from cosmos_pipeline.acceleration.attention import attention  # noqa: E402
from cosmos_pipeline.acceleration.memory import vae_tiling  # noqa: E402
from cosmos_pipeline.acceleration.options import Acceleration, AccelerationPlan, forward_count, step_kinds  # noqa: E402
from cosmos_pipeline.acceleration.plan import fa3_available, resolve_plan  # noqa: E402
from cosmos_pipeline.generate import GenerationResult, generate  # noqa: E402
from cosmos_pipeline.request import GenerationRequest  # noqa: E402

GIB = 2**30
PROMPT = (
    "A robot arm picks up a red box from a conveyor belt in a bright warehouse. The camera pans slowly "
    "across the scene while a car drives down a snowy street at night in the background."
)
FULL_STEPS = 36
NVIDIA_NATIVE_S = 228.8  # Cosmos-Predict2 2B, 720p, 93 frames, H100, FlashAttention-3 (NVIDIA's figure)

TRANSFORMER = dict(
    in_channels=17,
    out_channels=16,
    attention_head_dim=128,
    mlp_ratio=4.0,
    text_embed_dim=1024,
    adaln_lora_dim=256,
    max_size=(128, 240, 240),
    patch_size=(1, 2, 2),
    rope_scale=(1.0, 3.0, 3.0),
    concat_padding_mask=True,
    extra_pos_embed_type=None,
    use_crossattn_projection=True,
    crossattn_proj_in_channels=100352,  # 28 text-encoder layers x 3584
    encoder_hidden_states_channels=1024,
)
MODELS = {
    "2B": dict(num_attention_heads=16, num_layers=28),
    "14B": dict(num_attention_heads=40, num_layers=36),
}
# Qwen2.5-VL-7B (Cosmos-Reason1-7B): the text model, and its vision tower (never run: Cosmos feeds the
# encoder text only, but its 0.67B weights count for memory).
TEXT_ENCODER = dict(
    text=dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        max_position_embeddings=128000,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    ),
    vision=dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        fullatt_block_indexes=[7, 15, 23, 31],
    ),
)
# `--scale tiny`: the same code on toy sizes, to smoke-test the script on a CPU.
TINY = dict(
    transformer=dict(
        num_attention_heads=2, num_layers=2, attention_head_dim=64, crossattn_proj_in_channels=128
    ),
    text=dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, vocab_size=1024
    ),
    vision=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64),
    vae=dict(base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1),
    size=(64, 96, 9),
    low=(64, 96, 9),
)


# ----------------------------------------------------------------------------- building


def materialize(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Draw the weights of a meta-device module directly on `device` (no host copy)."""
    from accelerate.utils import set_module_tensor_to_device

    generator = torch.Generator(device=device).manual_seed(0)
    for name, param in list(module.named_parameters()):
        value = torch.empty(param.shape, device=device, dtype=dtype)
        if param.ndim >= 2:
            value.normal_(0.0, math.prod(param.shape[1:]) ** -0.5, generator=generator)
        else:
            value.fill_(0.0 if name.endswith("bias") else 1.0)
        set_module_tensor_to_device(module, name, device, value=value, dtype=dtype)
    return module.to(device).eval()


def build_transformer(model: str, scale: str, device: torch.device):
    from accelerate import init_empty_weights
    from diffusers import CosmosTransformer3DModel

    config = {**TRANSFORMER, **MODELS[model]}
    if scale == "tiny":
        config.update(TINY["transformer"], encoder_hidden_states_channels=32, text_embed_dim=32)
        config["crossattn_proj_in_channels"] = TINY["text"]["hidden_size"] * TINY["text"]["num_hidden_layers"]
    with init_empty_weights():
        transformer = CosmosTransformer3DModel(**config)
    return materialize(transformer, device, torch.bfloat16)


def build_pipeline(model: str, scale: str, device: torch.device):
    """The full pipeline, every component at its real size (or toy sizes for `--scale tiny`)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan, Cosmos2_5_PredictBasePipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from cosmos_pipeline import tiny
    from cosmos_pipeline.guardrail import PassThroughSafetyChecker

    tokenizer = tiny.build_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text, vision = dict(TEXT_ENCODER["text"]), dict(TEXT_ENCODER["vision"])
    if scale == "tiny":
        text.update(TINY["text"], num_key_value_heads=1)
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}
        vision.update(TINY["vision"], fullatt_block_indexes=[0])
    text.update(
        bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>")
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    with init_empty_weights():
        text_encoder = Qwen2_5_VLForConditionalGeneration(config)
        vae = AutoencoderKLWan(**(TINY["vae"] if scale == "tiny" else {}))
    text_encoder = materialize(text_encoder, device, torch.bfloat16)
    vae = materialize(vae, device, torch.bfloat16)
    transformer = build_transformer(model, scale, device)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # the pass-through guardrail is on purpose
    pipe = Cosmos2_5_PredictBasePipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=tiny.build_scheduler(),
        safety_checker=PassThroughSafetyChecker(),
    )
    diffusers_logging.set_verbosity(verbosity)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Seconds per call, each call timed on its own (the calls here take 10 ms to 10 s)."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def forward_flops(config, height: int, width: int, frames: int, text_tokens: int = 512) -> float:
    """Dense FLOPs of one transformer forward: attention and linears (the per-token adaLN is excluded)."""
    tokens = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
    hidden = config.num_attention_heads * config.attention_head_dim
    per_layer = (
        2 * tokens * hidden * hidden * 4  # self-attention q, k, v, out
        + 2 * tokens * hidden * hidden * 2  # cross-attention q, out
        + 2 * text_tokens * config.text_embed_dim * hidden * 2  # cross-attention k, v
        + 2 * tokens * hidden * hidden * config.mlp_ratio * 2  # feed-forward
        + 4 * tokens * tokens * hidden  # self-attention QK^T and PV
        + 4 * tokens * text_tokens * hidden  # cross-attention
    )
    return config.num_layers * per_layer + 2 * text_tokens * config.crossattn_proj_in_channels * 1024


def matmul_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    times = time_it(lambda: a @ b, device, 3) + time_it(lambda: a @ b, device, 10)
    return 2 * 8192**3 / statistics.median(times[3:]) / 1e12


class Run:
    """One run of sections: the device, the output folder, a time budget and the results."""

    def __init__(self, args) -> None:
        self.args = args
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()
        self.tables: list[str] = []
        self.results: dict[str, dict] = {}
        self.meta = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda"
            else platform.processor(),
            "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version() if self.device.type == "cuda" else None,
            "python": platform.python_version(),
        }
        try:
            import triton

            self.meta["triton"] = triton.__version__
        except ImportError:
            pass
        import diffusers
        import transformers

        self.meta.update(diffusers=diffusers.__version__, transformers=transformers.__version__)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def time_left(self) -> float:
        return self.args.time_limit - self.elapsed()

    def log(self, *parts) -> None:
        print(f"[{self.elapsed():6.1f}s]", *parts, flush=True)

    def save(self, section: str, data: dict) -> None:
        self.results[section] = data
        path = self.out / f"{section}.json"
        path.write_text(json.dumps({"meta": self.meta, **data}, indent=2, default=str))

    def table(self, title: str, header: list[str], rows: list[list]) -> None:
        def cell(value) -> str:
            if isinstance(value, float):
                return f"{value:.4g}"
            return "" if value is None else str(value)

        lines = [f"## {title}", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
        self.tables.append("\n".join(lines))
        (self.out / "tables.md").write_text("\n\n".join(self.tables) + "\n")


def request_for(run: Run, steps: int, seed: int = 1, low: bool = False, **fields) -> GenerationRequest:
    if run.args.scale == "tiny":
        height, width, frames = TINY["low" if low else "size"]
    else:
        height, width, frames = (256, 448, 93) if low else (704, 1280, 93)
    return GenerationRequest(
        prompt=PROMPT,
        height=height,
        width=width,
        num_frames=frames,
        num_inference_steps=steps,
        seed=seed,
        device=run.args.device,
        **fields,
    )


# ----------------------------------------------------------------------------- sections


def section_check(run: Run) -> None:
    """The tiny model through `loading.load_pipeline` on this device, and the kernels against exact math."""
    from cosmos_pipeline import loading, tiny
    from cosmos_pipeline.acceleration import kernels

    os.environ.setdefault("COSMOS_CACHE_DIR", tempfile.mkdtemp(prefix="cosmos-cache-"))
    device = run.device
    rows, data = [], {}
    request = GenerationRequest(
        prompt=PROMPT,
        model_id=tiny.EMBEDDED_MODEL_ID,
        revision=tiny.POST_TRAINED,
        num_frames=9,
        height=64,
        width=96,
        num_inference_steps=4,
        seed=3,
        device=run.args.device,
    )
    pipe = loading.load_pipeline(loading.PipelineKey.for_request(request))
    pipe.set_progress_bar_config(disable=True)
    plain = generate(pipe, request, options=Acceleration.preset("plain"))
    for name, options in [
        ("default", Acceleration()),
        ("fast", Acceleration.preset("fast")),
        ("plain again", Acceleration.preset("plain")),
    ]:
        result = generate(pipe, request, options=options)
        err = rel_err(result.latents, plain.latents)
        rows.append([f"tiny {name} vs plain", err, result.timings.forwards, result.acceleration["attention"]])
        data[f"tiny_{name}"] = {"latent_rel_err": err, "plan": result.acceleration}

    if device.type == "cuda":
        torch.manual_seed(0)
        for heads, tokens in [(2, 1000), (4, 4096), (16, 16384)]:
            q, k, v = (
                torch.randn(1, tokens, heads, 128, device=device, dtype=torch.bfloat16) for _ in range(3)
            )
            q, k, v = (x.transpose(1, 2) for x in (q, k, v))
            exact = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
            kernels_here = ["sdpa", "cudnn", "flash", "triton", "fp8-triton"]
            kernels_here += ["fa3", "fp8-fa3"] if fa3_available() else []
            for kernel in kernels_here:
                out = attention(q, k, v, kernel).unflatten(2, (heads, 128)).transpose(1, 2)
                err = rel_err(out, exact)
                rows.append([f"attention {kernel} N={tokens} H={heads}", err, None, None])
                data[f"attention_{kernel}_{tokens}"] = err
            err = rel_err(kernels.fp8_attention_reference(q, k, v), exact)
            rows.append([f"attention fp8 reference (PyTorch) N={tokens}", err, None, None])
            data[f"attention_fp8_reference_{tokens}"] = err
        linear = torch.nn.Linear(2048, 8192, bias=False, device=device, dtype=torch.bfloat16)
        x = torch.randn(4, 1000, 2048, device=device, dtype=torch.bfloat16)
        exact = x.float() @ linear.weight.float().t()
        err = rel_err(kernels.FP8Linear(linear.to(device)).to(device)(x), exact)
        rows.append(["FP8Linear vs float32", err, None, None])
        data["fp8_linear"] = err
    run.save("check", data)
    run.table(
        "check: relative error (latents, or outputs against exact math)",
        ["what", "rel err", "forwards", "attention"],
        rows,
    )


def section_attention(run: Run) -> None:
    """Each attention kernel at the self-attention shape: time, TFLOP/s, error on 1,024 queries."""
    device = run.device
    if device.type != "cuda":
        run.log("attention: needs CUDA, skipped")
        return
    rows, data = [], {"matmul_tflops": matmul_tflops(device)}
    shapes = [("2B", 16)]
    if run.args.model == "14B" or run.args.with_14b:
        shapes.append(("14B", 40))
    for model, heads in shapes:
        _attention_shape(run, model, heads, rows, data)
        torch.cuda.empty_cache()
    run.save("attention", data)
    run.table(
        f"attention at {ATTENTION_TOKENS} tokens x 128 channels, one layer "
        f"(bf16 matmul peak {data['matmul_tflops']:.0f} TFLOP/s)",
        ["model", "kernel", "ms", "TFLOP/s", "rel err vs fp32", "note"],
        rows,
    )


ATTENTION_TOKENS = 24 * 44 * 80  # 93 frames at 704 x 1280: 24 latent frames of 44 x 80 patches


def _attention_shape(run: Run, model: str, heads: int, rows: list, data: dict) -> None:
    from torch.nn.attention.flex_attention import flex_attention
    from triton.testing import do_bench

    from cosmos_pipeline.acceleration import kernels

    device, tokens = run.device, ATTENTION_TOKENS
    q, k, v = (torch.randn(1, tokens, heads, 128, device=device, dtype=torch.bfloat16) for _ in range(3))
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, N, D) views, as the processor hands them over
    probe = slice(0, 1024)
    exact = torch.nn.functional.scaled_dot_product_attention(q[:, :, probe].float(), k.float(), v.float())
    quantized = kernels.quantize_attention_inputs(q, k, v)
    flex = torch.compile(flex_attention, dynamic=False)
    candidates: dict[str, Callable[[], torch.Tensor]] = {
        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
        "flash": lambda: attention(q, k, v, "flash"),
        "cudnn": lambda: attention(q, k, v, "cudnn"),
        "efficient": lambda: attention(q, k, v, "efficient"),
        "flex": lambda: flex(q, k, v),
        "triton": lambda: attention(q, k, v, "triton"),
        "fa3": lambda: attention(q, k, v, "fa3"),
        "fp8-triton": lambda: attention(q, k, v, "fp8-triton"),
        "fp8-triton kernel only": lambda: kernels._fp8_attention_op(*quantized),
        "fp8-fa3": lambda: attention(q, k, v, "fp8-fa3"),
    }
    flops = 4 * tokens * tokens * heads * 128
    for name, fn in candidates.items():
        if run.args.kernels and name not in run.args.kernels:
            continue
        if run.time_left() < 60:
            run.log("attention: out of time")
            break
        try:
            out = fn()
            if out.dim() == 3:  # (B, N, H * D) from attention
                out = out.unflatten(2, (heads, 128)).transpose(1, 2)
            err = rel_err(out[:, :, probe], exact)
            seconds = do_bench(fn, warmup=300, rep=1500, return_mode="median") / 1e3
        except Exception as error:  # a kernel that does not support the shape: record it and go on
            rows.append([model, name, None, None, None, f"{type(error).__name__}: {str(error)[:80]}"])
            continue
        rows.append([model, name, seconds * 1e3, flops / seconds / 1e12, err, ""])
        data[f"{model} {name}"] = {"ms": seconds * 1e3, "tflops": flops / seconds / 1e12, "rel_err": err}
        run.log(rows[-1])


FORWARD_VARIANTS: dict[str, tuple[str, Acceleration]] = {
    "plain": ("plain: diffusers as-is", Acceleration.preset("plain")),
    "default": ("default mode", Acceleration()),
    "fast": (
        "fast-mode kernels: fp8 attention + fp8 linears",
        Acceleration(attention="fp8", fp8_linear=True),
    ),
    "fp8-attention": ("default + fp8 attention", Acceleration(attention="fp8")),
    "fp8-linear": ("default + fp8 linears", Acceleration(fp8_linear=True)),
    "fast-triton": (
        "fp8 attention (Triton kernel) + fp8 linears",
        Acceleration(attention="fp8-triton", fp8_linear=True),
    ),
    "cudnn": ("default with cuDNN attention", Acceleration(attention="cudnn")),
    "compile-sdpa": ("compile only (native SDPA)", Acceleration(attention="sdpa", frame_modulation="off")),
    "compile-cudnn": ("compile + cuDNN", Acceleration(attention="cudnn", frame_modulation="off")),
    "eager-frames": ("eager, cuDNN + per-frame modulation", Acceleration(compile="off", attention="cudnn")),
    "triton": ("default with the Triton bf16 kernel", Acceleration(attention="triton")),
    "fp8-attention-eager": ("eager, fp8 attention", Acceleration(compile="off", attention="fp8")),
    "fp8-triton-attention": ("default + fp8 attention (Triton kernel)", Acceleration(attention="fp8-triton")),
    "fp8-fa3-attention": ("default + fp8 attention (FA3, smoothed K/V)", Acceleration(attention="fp8-fa3")),
    "fast-fa3": (
        "fp8 attention (FA3, smoothed K/V) + fp8 linears",
        Acceleration(attention="fp8-fa3", fp8_linear=True),
    ),
}


def section_forward(run: Run) -> None:
    """Seconds per transformer forward, per lever combination, at 720p x 93 frames."""
    device = run.device
    transformer = build_transformer(run.args.model, run.args.scale, device)
    height, width, frames = TINY["size"] if run.args.scale == "tiny" else (704, 1280, 93)
    latent = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    generator = torch.Generator(device=device).manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(latent, device=device, generator=generator).bfloat16(),
        condition_mask=torch.zeros(1, 1, *latent[2:], device=device, dtype=torch.bfloat16),
        timestep=torch.full((1, 1, latent[2], 1, 1), 0.9, device=device),
        encoder_hidden_states=torch.randn(
            1, 512, transformer.config.crossattn_proj_in_channels, device=device, generator=generator
        ).bfloat16(),
        padding_mask=torch.zeros(1, 1, height, width, device=device, dtype=torch.bfloat16),
        return_dict=False,
    )
    flops = forward_flops(transformer.config, height, width, frames)
    floor_tflops = run.results.get("attention", {}).get("matmul_tflops") or 790.0
    rows, data = [], {"flops": flops, "floor_s": flops / floor_tflops / 1e12}
    exact = None
    if run.args.fp32_reference:  # the bf16 noise floor: how far the plain bf16 forward is from float32
        transformer.float()
        fp32_inputs = {k: v.float() if torch.is_tensor(v) else v for k, v in inputs.items()}
        with torch.no_grad():
            exact = transformer(**fp32_inputs)[0]
        transformer.to(torch.bfloat16)
        del fp32_inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    reference = None
    for key in run.args.variants:
        name, options = FORWARD_VARIANTS[key]
        if run.time_left() < (40 if run.args.scale == "real" else 5):
            run.log("forward: out of time before", name)
            break
        plan = resolve_plan(options, device)
        torch._dynamo.reset()
        try:
            accelerate_transformer(transformer, plan)
            with torch.no_grad():
                warm = time_it(lambda: transformer(**inputs), device, 1)[0]  # compiles where asked
                reset_peak(device)
                times = time_it(lambda: transformer(**inputs), device, run.args.repeats)
                out = transformer(**inputs)[0]
        except Exception as error:  # record and go on: one broken lever must not cost the others
            data[name] = {"error": f"{type(error).__name__}: {error}"}
            rows.append([name, None, None, None, None, f"{type(error).__name__}: {str(error)[:100]}", None])
            run.log(rows[-1])
            accelerate_transformer(transformer, AccelerationPlan())
            continue
        reference = out.float() if reference is None else reference
        seconds = statistics.median(times)
        entry = {
            "s": seconds,
            "times": times,
            "first_call_s": warm,
            "tflops": flops / seconds / 1e12,
            "rel_err_vs_plain": rel_err(out, reference),
            "rel_err_vs_fp32": None if exact is None else rel_err(out, exact),
            "peak_gib": peak_gib(device),
            "plan": plan.as_dict(),
        }
        data[name] = entry
        rows.append(
            [name, seconds, entry["tflops"], entry["rel_err_vs_plain"], entry["rel_err_vs_fp32"], warm]
        )
        rows[-1].append(entry["peak_gib"])
        run.log(rows[-1])
        run.save(f"forward_{run.args.model}", data)  # after each variant: a killed run keeps what it measured
    accelerate_transformer(transformer, AccelerationPlan())
    torch._dynamo.reset()  # compiled graphs hold on to the weights
    run.save(f"forward_{run.args.model}", data)
    run.table(
        f"{run.args.model} transformer forward, 720p x 93 frames ({flops / 1e15:.3f} PFLOP; dense floor "
        f"{data['floor_s']:.2f} s at {floor_tflops:.0f} TFLOP/s)",
        [
            "variant",
            "s / forward",
            "TFLOP/s",
            "rel err vs plain",
            "rel err vs fp32",
            "first call s",
            "peak GiB",
        ],
        rows,
    )


def section_vae(run: Run) -> None:
    """VAE decode of a 720p x 93-frame latent: untiled and tiled."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan

    device = run.device
    with init_empty_weights():
        vae = AutoencoderKLWan(**(TINY["vae"] if run.args.scale == "tiny" else {}))
    vae = materialize(vae, device, torch.bfloat16)
    height, width, frames = TINY["size"] if run.args.scale == "tiny" else (704, 1280, 93)
    latents = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device=device).bfloat16()
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    rows, data = [], {}
    with torch.no_grad():
        vae.decode(latents)  # warm-up: cuDNN handles and plans
        for name, tiled in [("untiled", False), ("tiled", True)]:
            with vae_tiling(vae, tiled):
                reset_peak(device)
                seconds = time_it(lambda: vae.decode(latents), device, 1)[0]
            peak = (torch.cuda.max_memory_allocated(device) - base) / GIB if device.type == "cuda" else None
            data[name] = {"s": seconds, "peak_above_weights_gib": peak}
            rows.append([name, seconds, peak])
            run.log(rows[-1])
    pixels = height * width * frames
    data["bytes_per_pixel"] = {
        k: v["peak_above_weights_gib"] * GIB / pixels for k, v in data.items() if v["peak_above_weights_gib"]
    }
    run.save("vae", data)
    run.table("VAE decode, 720p x 93 frames", ["decode", "s", "peak above weights GiB"], rows)


def baseline_call(pipe, request: GenerationRequest, device: torch.device) -> dict:
    """The plain diffusers call, as the upstream script makes it (PIL frames out)."""
    stamps: list[float] = []
    final: list[torch.Tensor] = []

    def on_step_end(_pipe, step, timestep, kwargs):
        sync(device)
        stamps.append(time.perf_counter())
        final[:] = [kwargs["latents"]]
        return {}

    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    output = pipe(
        prompt=request.prompt,
        height=request.height,
        width=request.width,
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        generator=torch.Generator().manual_seed(request.seed),
        callback_on_step_end=on_step_end,
    )
    sync(device)
    total = time.perf_counter() - start
    frames = np.stack([np.asarray(image) for image in output.frames[0]])
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {
        "total_s": total,
        "steps_s": steps,
        "latents": final[0],
        "frames": frames,
        "peak_gib": peak_gib(device),
    }


def summarize(result: GenerationResult, kinds_36: list[str], last: bool = False) -> dict:
    """Per-stage seconds, and the 36-step video extrapolated from the measured steps by step kind.

    `last`: a step costs what the last one did, and what the first one cost beyond that is paid once
    per video (transfers under offloading); else the median step of each kind.
    """
    t = result.timings
    kinds = step_kinds(
        AccelerationPlan(**{k: v for k, v in result.acceleration.items() if k != "vae_tiled"}),
        result.request.num_inference_steps,
        result.request.guidance_scale > 1,
    )
    by_kind: dict[str, list[float]] = {}
    for kind, seconds in zip(kinds, t.steps_s, strict=True):
        by_kind.setdefault(kind, []).append(seconds)
    per_kind = {kind: values[-1] if last else statistics.median(values) for kind, values in by_kind.items()}
    if "cfg" in per_kind and "cond" not in per_kind:
        per_kind["cond"] = per_kind["cfg"] / 2
    if "cond" in per_kind and "cfg" not in per_kind:
        per_kind["cfg"] = per_kind["cond"] * 2
    per_kind.setdefault("reuse", 0.0)
    fixed = t.prompt_encoding_s + t.conditioning_s + t.decode_s
    if last:
        fixed += t.steps_s[0] - per_kind[kinds[0]]
    video = fixed + sum(per_kind[kind] for kind in kinds_36)
    return {
        "prompt_encoding_s": t.prompt_encoding_s,
        "conditioning_s": t.conditioning_s,
        "decode_s": t.decode_s,
        "steps_s": t.steps_s,
        "step_s_by_kind": per_kind,
        "forward_s": per_kind["cfg"] / 2,
        "total_s": t.total_s,
        "video_36_s": video,
        "forwards_36": forward_count(kinds_36),
        "peak_gib": result.peak_memory_bytes / GIB if result.peak_memory_bytes else None,
        "vae_tiled": result.acceleration["vae_tiled"],
        "plan": result.acceleration,
    }


def fresh_prompt(pipe) -> None:
    """Forget cached prompt embeddings, so that a measured run encodes its prompt like a new request."""
    pipe.__dict__.pop("_cosmos_prompt_cache", None)


def section_pipeline(run: Run, pipe=None) -> None:
    """Baseline vs default vs fast on one seed, then the memory options; extrapolated to 36 steps."""
    device = run.device
    pipe = pipe or build_pipeline(run.args.model, run.args.scale, device)
    steps = run.args.steps
    probe = request_for(run, 1)
    flops = forward_flops(pipe.transformer.config, probe.height, probe.width, probe.num_frames)
    floor_tflops = run.results.get("attention", {}).get("matmul_tflops") or 790.0
    floor_video = 2 * FULL_STEPS * flops / floor_tflops / 1e12
    rows, data = [], {"flops_per_forward": flops, "floor_video_s": floor_video}
    default_36 = step_kinds(AccelerationPlan(), FULL_STEPS, True)

    # (a) Baseline: the plain diffusers call on an untouched pipeline.
    apply_acceleration(pipe, Acceleration.preset("plain"), device=device)
    if not run.args.skip_baseline:
        baseline_call(pipe, request_for(run, 1), device)  # warm-up: cuDNN/cuBLAS handles, allocator
        base = baseline_call(pipe, request_for(run, steps), device)
        step = statistics.median(base["steps_s"]) if base["steps_s"] else base["total_s"] / steps
        base_video = base["total_s"] - steps * step + FULL_STEPS * step
        rest = base["total_s"] - steps * step  # prompt encoding, latents, VAE decode, PIL frames
        data["baseline"] = {
            "total_s": base["total_s"],
            "step_s": step,
            "forward_s": step / 2,
            "rest_s": rest,
            "video_36_s": base_video,
            "peak_gib": base["peak_gib"],
        }
        row = ["(a) baseline: plain diffusers call", step / 2, step, None, rest, base_video]
        rows.append(row + [flops / (step / 2) / 1e12, base["peak_gib"], 2 * FULL_STEPS, None])
        run.log(rows[-1])

    # (b) Default mode and (c) fast mode through the project's generation path.
    results: dict[str, GenerationResult] = {}
    modes = [
        # The plain math with another exact kernel (FlashAttention-2): how far two correct bf16 runs land.
        ("noise", Acceleration.preset("plain", attention="flash")),
        ("default", Acceleration()),
        ("fast", Acceleration.preset("fast", attention=run.args.fast_attention)),
    ]
    labels = {
        "noise": "(a') plain math with the FA2 kernel: bf16 noise",
        "default": "(b) default mode",
        "fast": "(c) fast mode",
    }
    for name, options in modes:
        if name not in run.args.modes or (name == "noise" and "baseline" not in data):
            continue
        plan = apply_acceleration(pipe, options, device=device)
        warm_start = time.perf_counter()
        if name != "noise":
            generate(pipe, request_for(run, 1), options=options)  # compile and autotune, once per process
        warm = time.perf_counter() - warm_start
        fresh_prompt(pipe)
        result = generate(pipe, request_for(run, steps))
        results[name] = result
        kinds_36 = step_kinds(plan, FULL_STEPS, True)
        summary = summarize(result, kinds_36) | {"warm_up_s": warm}
        if "baseline" in data:
            summary["latent_rel_err_vs_baseline"] = rel_err(result.latents, base["latents"])
            summary["frames_psnr_vs_baseline"] = psnr(result.frames, base["frames"])
        if name == "fast":
            summary["latent_rel_err_vs_default"] = rel_err(result.latents, results["default"].latents)
            summary["frames_psnr_vs_default"] = psnr(result.frames, results["default"].frames)
        data[name] = summary
        run.save(f"pipeline_{run.args.model}", data)
        label = labels[name]
        row = [label, summary["forward_s"], summary["step_s_by_kind"]["cfg"], summary["prompt_encoding_s"]]
        row += [summary["decode_s"], summary["video_36_s"], flops / summary["forward_s"] / 1e12]
        rows.append(
            row + [summary["peak_gib"], summary["forwards_36"], summary.get("latent_rel_err_vs_baseline")]
        )
        run.log(rows[-1])

    # Memory options, on the default mode's transformer.
    memory_rows = []
    memory_options = [
        (key, name, options)
        for key, name, options in [
            ("text_encoder", "offload text encoder", Acceleration(offload="text_encoder")),
            ("tiled", "tiled VAE decode", Acceleration(vae_tiling="on")),
            ("model", "model CPU offload", Acceleration(offload="model")),
            (
                "budget",
                f"auto within {run.args.budget_gib:g} GiB",
                Acceleration(memory_budget_gib=run.args.budget_gib),
            ),
        ]
        if key in run.args.memory
    ]
    reference = data["default"]
    for _, name, options in memory_options:
        if run.time_left() < (90 if run.args.scale == "real" else 5):
            run.log("pipeline: out of time before", name)
            break
        try:
            apply_acceleration(pipe, options, device=device)
        except Exception as error:
            memory_rows.append([name, f"{type(error).__name__}: {str(error)[:100]}"] + [None] * 6)
            run.log(memory_rows[-1])
            continue
        enforce = device.type == "cuda" and options.memory_budget_gib is not None
        if enforce:  # make the budget real: an allocation past it fails instead of being counted
            torch.cuda.empty_cache()
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(options.memory_budget_gib * GIB / total, device)
        try:
            generate(pipe, request_for(run, 1))  # warm-up: recompiles after a move, first transfers
            fresh_prompt(pipe)
            result = generate(pipe, request_for(run, 2))
            summary = summarize(result, default_36, last=True)
        except Exception as error:  # record it and go on with the other options
            data[f"memory: {name}"] = {"error": f"{type(error).__name__}: {error}"}
            memory_rows.append([name, f"{type(error).__name__}: {str(error)[:100]}"] + [None] * 6)
            run.log(memory_rows[-1])
            continue
        finally:
            if enforce:
                torch.cuda.set_per_process_memory_fraction(1.0, device)
        cost = summary["video_36_s"] / reference["video_36_s"] - 1
        data[f"memory: {name}"] = summary | {"time_cost": cost}
        run.save(f"pipeline_{run.args.model}", data)
        row = [name, result.acceleration["offload"], summary["vae_tiled"], summary["peak_gib"]]
        memory_rows.append(
            row + [summary["prompt_encoding_s"], summary["decode_s"], summary["video_36_s"], cost]
        )
        run.log(memory_rows[-1])
    apply_acceleration(pipe, Acceleration(), device=device)

    run.save(f"pipeline_{run.args.model}", data)
    header = ["mode", "s / forward", "s / step", "prompt enc. s", "decode s (baseline: all but steps)"]
    header += [
        "video s (36 steps, extrapolated)",
        "TFLOP/s",
        "peak GiB",
        "forwards / video",
        "latent rel err vs (a)",
    ]
    run.table(
        f"{run.args.model} pipeline, 720p x 93 frames, guidance 7, {steps} measured steps", header, rows
    )
    run.table(
        f"{run.args.model} memory options (default mode, 2 steps after a warm-up, extrapolated to 36)",
        ["option", "offload", "VAE tiled", "peak GiB", "prompt enc. s", "decode s", "video s", "time cost"],
        memory_rows,
    )
    ratio_lines = [
        f"dense floor: {floor_video:.1f} s per video "
        f"({flops / 1e15:.3f} PFLOP x {2 * FULL_STEPS} at {floor_tflops:.0f} TFLOP/s)"
    ]
    for name in ("baseline", "default", "fast"):
        if name in data:
            video = data[name]["video_36_s"]
            vs_base = f"{video / data['baseline']['video_36_s']:.3f}x baseline" if "baseline" in data else ""
            ratio_lines.append(
                f"{name}: {video:.1f} s per video (extrapolated) = {vs_base}, "
                f"{video / floor_video:.3f}x dense floor, {video / NVIDIA_NATIVE_S:.3f}x NVIDIA native"
            )
    if "fast" in data and "latent_rel_err_vs_default" in data["fast"]:
        fast = data["fast"]
        ratio_lines.append(
            f"fast vs default after {steps} steps, same seed: latent rel err "
            f"{fast['latent_rel_err_vs_default']:.4f}, PSNR {fast['frames_psnr_vs_default']:.2f} dB"
        )
    run.tables.append("\n".join(ratio_lines))


def section_full(run: Run, pipe=None) -> None:
    """Full 36-step runs: the default mode, then the fast mode, with the fast mode's drift."""
    device = run.device
    pipe = pipe or build_pipeline(run.args.model, run.args.scale, device)
    rows, data, results = [], {}, {}
    for name in run.args.full_modes:
        options = Acceleration() if name == "default" else Acceleration.preset(name)
        if name == "fast":
            options = Acceleration.preset("fast", attention=run.args.fast_attention)
        plan = apply_acceleration(pipe, options, device=device)
        warm_start = time.perf_counter()
        generate(pipe, request_for(run, 1))  # compile and autotune, once per process
        data[f"{name}_warm_up_s"] = time.perf_counter() - warm_start
        if run.time_left() < 60:
            run.log("full: out of time before", name)
            break
        fresh_prompt(pipe)
        result = generate(pipe, request_for(run, FULL_STEPS))
        results[name] = result
        summary = summarize(result, step_kinds(plan, FULL_STEPS, True))
        data[name] = summary
        t = result.timings
        row = [name, t.total_s, t.denoising_s, summary["prompt_encoding_s"], summary["decode_s"], t.forwards]
        rows.append(row + [t.denoising_s / t.forwards, summary["peak_gib"]])
        run.log(rows[-1])
    if "default" in results and "fast" in results:
        data["fast_drift"] = {
            "latent_rel_err": rel_err(results["fast"].latents, results["default"].latents),
            "frames_psnr_db": psnr(results["fast"].frames, results["default"].frames),
        }
    run.save(f"full_{run.args.model}", data)
    run.table(
        f"{run.args.model} full {FULL_STEPS}-step runs, 720p x 93 frames (measured end to end)",
        [
            "mode",
            "total s",
            "denoising s",
            "prompt enc. s",
            "decode s",
            "forwards",
            "denoising s / forward",
            "peak GiB",
        ],
        rows,
    )
    if "fast_drift" in data:
        drift = data["fast_drift"]
        run.tables.append(
            f"fast vs default at 720p, seed 1: latent rel err {drift['latent_rel_err']:.4f}, "
            f"PSNR {drift['frames_psnr_db']:.2f} dB"
        )
    if "default" in data:
        total = data["default"]["total_s"]
        run.tables.append(
            f"default mode, one full video: {total:.1f} s = {total / NVIDIA_NATIVE_S:.3f}x NVIDIA native "
            f"({NVIDIA_NATIVE_S} s)"
        )


DRIFT_LEVERS: dict[str, dict] = {
    "plain (bf16 noise floor)": dict(compile="off", attention="sdpa", frame_modulation="off"),
    "fp8 attention": dict(attention="fp8"),
    "fp8 linears": dict(fp8_linear=True),
    "guidance interval (0.25, 0.75)": dict(guidance_interval=(0.25, 0.75)),
    "step cache every 2nd step in (0.5, 1.0)": dict(cache_interval=2, cache_window=(0.5, 1.0)),
    "fast preset (all of the above)": dict(
        attention="fp8", fp8_linear=True, guidance_interval=(0.25, 0.75), cache_interval=2
    ),
}


def section_drift(run: Run, pipe=None) -> None:
    """Each fast-mode lever against the default mode (compile off), 36 steps at 256p, two seeds."""
    device = run.device
    pipe = pipe or build_pipeline(run.args.model, run.args.scale, device)
    rows, data = [], {}
    seeds = tuple(run.args.seeds)
    reference: dict[int, GenerationResult] = {}
    for seed in seeds:
        reference[seed] = generate(
            pipe, request_for(run, FULL_STEPS, seed, low=True), options=Acceleration(compile="off")
        )
    for name, fields in DRIFT_LEVERS.items():
        if run.time_left() < 30:
            run.log("drift: out of time before", name)
            break
        options = Acceleration(**{"compile": "off", **fields})
        errs, psnrs = [], []
        for seed in seeds:
            result = generate(pipe, request_for(run, FULL_STEPS, seed, low=True), options=options)
            errs.append(rel_err(result.latents, reference[seed].latents))
            psnrs.append(psnr(result.frames, reference[seed].frames))
        forwards = forward_count(step_kinds(resolve_plan(options, device), FULL_STEPS, True))
        data[name] = {"latent_rel_err": errs, "frames_psnr_db": psnrs, "forwards_36": forwards}
        rows.append([name, statistics.mean(errs), statistics.mean(psnrs), forwards])
        run.log(rows[-1])
    apply_acceleration(pipe, Acceleration(), device=device)
    run.save(f"drift_{run.args.model}", data)
    run.table(
        f"{run.args.model} drift against the default mode: 256p x 93 frames, {FULL_STEPS} steps, "
        f"seeds {seeds} (mean)",
        ["lever", "latent rel err", "PSNR dB", "forwards / video"],
        rows,
    )


def section_fp8diag(run: Run, pipe=None) -> None:
    """FP8 attention kernels on the self-attention inputs of the model's first block, against FA3 bf16."""
    device = run.device
    transformer = (
        pipe.transformer if pipe is not None else build_transformer(run.args.model, run.args.scale, device)
    )
    exact = "cudnn" if device.type == "cuda" else "triton"  # any kernel but sdpa installs the processors
    accelerate_transformer(transformer, AccelerationPlan(attention=exact))
    from cosmos_pipeline.acceleration import attention as attention_module

    captured: list[torch.Tensor] = []

    def capture(query, key, value, kernel):
        if not captured and query.shape[2] == key.shape[2]:
            captured.extend(x.clone() for x in (query, key, value))
        return attention(query, key, value, kernel)

    height, width, frames = TINY["size"] if run.args.scale == "tiny" else (704, 1280, 93)
    latent = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    attention_module.attention = capture  # what the attention processors call
    try:
        with torch.no_grad():
            transformer(
                hidden_states=torch.randn(latent, device=device).bfloat16(),
                condition_mask=torch.zeros(1, 1, *latent[2:], device=device, dtype=torch.bfloat16),
                timestep=torch.full((1, 1, latent[2], 1, 1), 0.9, device=device),
                encoder_hidden_states=torch.randn(
                    1, 512, transformer.config.crossattn_proj_in_channels, device=device
                ).bfloat16(),
                padding_mask=torch.zeros(1, 1, height, width, device=device, dtype=torch.bfloat16),
            )
    finally:
        attention_module.attention = attention
    accelerate_transformer(transformer, AccelerationPlan())
    q, k, v = captured
    random = [torch.randn_like(x) for x in (q, k, v)]
    rows, data = [], {}
    for inputs_name, (qq, kk, vv) in [("block-0 inputs", (q, k, v)), ("random inputs", random)]:
        reference = attention(qq, kk, vv, "fa3" if fa3_available() else "sdpa")
        stats = {
            "k_mean_over_rms": float(
                kk.float().mean(2).norm() / kk.float().pow(2).mean().sqrt() / kk.shape[1] ** 0.5
            )
        }
        smooth_k, smooth_v = kk - kk.mean(2, keepdim=True), vv - vv.mean(2, keepdim=True)
        for kernel in (exact, "fp8-triton", "fp8-fa3", "fp8-fa3 smooth k, v"):
            if kernel.startswith("fp8-fa3") and not fa3_available():
                continue
            if kernel == "fp8-fa3 smooth k, v":
                out = attention(qq, smooth_k, smooth_v, "fp8-fa3") + vv.mean(2, keepdim=True).transpose(
                    1, 2
                ).flatten(2, 3)
            else:
                out = attention(qq, kk, vv, kernel)
            err = rel_err(out, reference)
            rows.append([inputs_name, kernel, err])
            data[f"{inputs_name} {kernel}"] = err
        data[f"{inputs_name} stats"] = stats
        rows.append([inputs_name, "k: norm of mean / rms", stats["k_mean_over_rms"]])
    run.save("fp8diag", data)
    run.table(
        "FP8 attention on real block inputs: rel err against the FA3 bf16 output",
        ["inputs", "kernel", "rel err"],
        rows,
    )


def section_distilled(run: Run, pipe=None) -> None:
    """The distilled sampler's whole video beside the default mode's, on one pipeline in the default mode.

    Distilled: prompt encoding, 4 transformer forwards (no CFG), VAE decode, measured end to end
    `--repeats` times after one warm-up video (which compiles the blocks). Default: `--steps` measured
    steps of `generate`, extrapolated to 36 as in `pipeline` (the weights are random, so only time and
    memory mean anything here, not the frames).
    """
    device = run.device
    pipe = pipe or build_pipeline(run.args.model, run.args.scale, device)
    plan = apply_acceleration(pipe, Acceleration(), device=device)
    request = request_for(run, run.args.steps)
    distilled = request.model_copy(update={"revision": "distilled"})  # the same video, the few-step sampler
    warm_start = time.perf_counter()
    generate(pipe, distilled)  # compile and autotune, once per process
    data: dict = {"warm_up_s": time.perf_counter() - warm_start, "distilled": []}
    rows = []
    for repeat in range(run.args.repeats):
        reset_peak(device)
        t = generate(pipe, distilled).timings
        entry = {
            "total_s": t.total_s,
            "prompt_encoding_s": t.prompt_encoding_s,
            "steps_s": t.steps_s,
            "decode_s": t.decode_s,
            "forwards": t.forwards,
            "peak_gib": peak_gib(device),
        }
        data["distilled"].append(entry)
        row = [f"distilled, 4 steps (video {repeat + 1})", t.forwards, t.prompt_encoding_s, t.denoising_s]
        rows.append(row + [t.denoising_s / t.forwards, t.decode_s, t.total_s, "measured", entry["peak_gib"]])
        run.log(rows[-1])
        run.save(f"distilled_{run.args.model}", data)

    reset_peak(device)
    fresh_prompt(pipe)
    result = generate(pipe, request)
    summary = summarize(result, step_kinds(plan, FULL_STEPS, True))
    data["default"] = summary
    run.save(f"distilled_{run.args.model}", data)
    denoising = summary["video_36_s"] - summary["prompt_encoding_s"] - summary["decode_s"]
    row = [f"default, {FULL_STEPS} steps, guidance 7", summary["forwards_36"], summary["prompt_encoding_s"]]
    row += [denoising, summary["forward_s"], summary["decode_s"], summary["video_36_s"]]
    rows.append(row + [f"{run.args.steps} steps measured, extrapolated", summary["peak_gib"]])
    run.log(rows[-1])
    header = ["mode", "forwards", "prompt enc. s", "denoising s", "s / forward", "decode s", "video s"]
    run.table(
        f"{run.args.model} Text2World, {request.height}x{request.width} x {request.num_frames} frames: "
        "distilled sampler vs default mode",
        header + ["how", "peak GiB"],
        rows,
    )
    best = min(entry["total_s"] for entry in data["distilled"])
    run.tables.append(
        f"distilled: {best:.1f} s per video (best of {run.args.repeats}; target <= 25 s on one H100), "
        f"{summary['video_36_s'] / best:.1f}x faster than the default mode's {summary['video_36_s']:.1f} s"
    )


SECTIONS = {
    "fp8diag": section_fp8diag,
    "distilled": section_distilled,
    "check": section_check,
    "attention": section_attention,
    "forward": section_forward,
    "vae": section_vae,
    "pipeline": section_pipeline,
    "full": section_full,
    "drift": section_drift,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sections", nargs="+", choices=list(SECTIONS))
    parser.add_argument("--model", choices=list(MODELS), default="2B")
    parser.add_argument("--scale", choices=["real", "tiny"], default="real")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=os.environ.get("OUT", "outputs/benchmark"))
    parser.add_argument("--steps", type=int, default=3, help="measured steps per pipeline mode")
    parser.add_argument("--repeats", type=int, default=3, help="timed transformer forwards per variant")
    parser.add_argument(
        "--budget-gib", type=float, default=20.0, help="memory budget of the auto memory plan"
    )
    parser.add_argument("--full-modes", nargs="+", default=["default", "fast"])
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--with-14b", action="store_true", help="attention: the 14B shape too")
    parser.add_argument("--kernels", nargs="*", default=[], help="attention: only these kernels")
    parser.add_argument(
        "--variants", nargs="+", default=list(FORWARD_VARIANTS), choices=list(FORWARD_VARIANTS)
    )
    parser.add_argument("--fp32-reference", action="store_true", help="forward: error against float32 too")
    parser.add_argument(
        "--fast-attention", default="fp8", help="pipeline/full: the fast mode's attention kernel"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="drift: seeds")
    parser.add_argument("--memory", nargs="*", default=["text_encoder", "tiled", "model", "budget"])
    parser.add_argument(
        "--modes", nargs="+", default=["noise", "default", "fast"], help="pipeline: modes to run"
    )
    parser.add_argument("--time-limit", type=float, default=560.0, help="seconds; later variants are skipped")
    args = parser.parse_args(argv)

    run = Run(args)
    run.log(json.dumps(run.meta))
    pipe = None
    for section in args.sections:
        run.log(f"== {section}")
        if section in ("pipeline", "full", "drift") and args.fast_attention == "auto":
            args.fast_attention = "fp8"
        if section in ("pipeline", "full", "drift", "fp8diag", "distilled"):
            pipe = pipe or build_pipeline(args.model, args.scale, run.device)
            run.log("pipeline built", f"peak {peak_gib(run.device)} GiB")
            SECTIONS[section](run, pipe)
        else:
            SECTIONS[section](run)
        checked = run.results.get(f"forward_{args.model}", {}).get("default + fp8 attention", {})
        if args.fast_attention == "auto" and checked.get("rel_err_vs_plain", 0) > 0.1:
            run.log(
                f"fp8-fa3 drifts by {checked['rel_err_vs_plain']:.3f} here: the fast mode uses fp8-triton"
            )
            args.fast_attention = "fp8-triton"
    print("\n\n".join(run.tables))
    print(f"\n{run.meta['command']} | {run.meta['device']} | {run.meta['date']} | {run.elapsed():.0f} s")


if __name__ == "__main__":
    main()
