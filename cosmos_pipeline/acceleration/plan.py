"""`resolve_plan`: options -> decisions for one device, and the memory arithmetic behind the offload choice.

Pure but for the package look-ups that `resolve_plan`'s `has_triton` and `has_fa3` replace, so tests can
fake any GPU.
"""

import functools
import importlib.util
import logging
from dataclasses import dataclass

import torch
from torch import nn

from cosmos_pipeline.acceleration.options import Acceleration, AccelerationPlan

logger = logging.getLogger(__name__)

HOPPER = (9, 0)
FP8_MATMUL = (8, 9)  # Ada and newer have e4m3 tensor cores
GIB = 2**30

# Working memory above the weights, measured on an H100 (benchmarks/RESULTS.md) and scaled linearly.
DECODE_BYTES_PER_PIXEL = 128.0  # untiled Wan VAE decode: 9.9 GiB for 704 x 1280 x 93 output pixels
TILED_DECODE_BYTES_PER_PIXEL = 28.0  # tiled: 2.2 GiB
DENOISE_BYTES_PER_TOKEN_CHANNEL = 40.0  # one plain forward: 6.2 GiB (2B) and 15.5 GiB (14B) at 84,480 tokens
ENCODE_BYTES = int(1.5 * GIB)  # prompt encoding (512 tokens) on top of all weights: 1.2 GiB measured


@dataclass(frozen=True)
class ComponentBytes:
    """Weight bytes of the pipeline's components, for the offload decision."""

    text_encoder: int
    text_encoder_vision: int  # its vision tower: never run by Cosmos, and kept on the host when offloading
    transformer: int
    vae: int
    hidden_size: int  # of the transformer, to scale its activation memory

    @classmethod
    def of(cls, pipe) -> "ComponentBytes":
        return cls(
            text_encoder=module_bytes(pipe.text_encoder),
            text_encoder_vision=module_bytes(vision_tower(pipe.text_encoder) or nn.Module()),
            transformer=module_bytes(pipe.transformer),
            vae=module_bytes(pipe.vae),
            hidden_size=pipe.transformer.config.num_attention_heads
            * pipe.transformer.config.attention_head_dim,
        )


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def decode_bytes(height: int, width: int, num_frames: int, tiled: bool = False) -> int:
    per_pixel = TILED_DECODE_BYTES_PER_PIXEL if tiled else DECODE_BYTES_PER_PIXEL
    return int(per_pixel * height * width * num_frames)


def denoise_bytes(height: int, width: int, num_frames: int, hidden_size: int) -> int:
    tokens = ((num_frames - 1) // 4 + 1) * (height // 16) * (width // 16)
    return int(DENOISE_BYTES_PER_TOKEN_CHANNEL * tokens * hidden_size)


def choose_offload(
    budget: int, sizes: ComponentBytes, height: int = 704, width: int = 1280, frames: int = 93
) -> str:
    """The least offloading whose peak fits `budget` at the given output size (720p x 93 by default).

    `none`: everything resident. `text_encoder`: the encoder visits the GPU only while encoding, so the
    peak is the larger of (all weights + encoding) and (transformer + VAE + denoising or a tiled
    decode). `model`: one component on the GPU at a time.
    """
    weights = sizes.text_encoder + sizes.transformer + sizes.vae
    denoise = denoise_bytes(height, width, frames, sizes.hidden_size)
    if weights + max(denoise, decode_bytes(height, width, frames)) <= budget:
        return "none"
    rest = sizes.transformer + sizes.vae + max(denoise, decode_bytes(height, width, frames, tiled=True))
    if max(weights - sizes.text_encoder_vision + ENCODE_BYTES, rest) <= budget:
        return "text_encoder"
    return "model"


def device_capability(device: torch.device) -> tuple[int, int] | None:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.cache
def fa3_available() -> bool:
    """FlashAttention-3's forward kernels for Hopper, from the optional `fa3-fwd` package, importable here."""
    if importlib.util.find_spec("fa3_fwd_interface") is None:
        return False
    try:
        import fa3_fwd_interface  # noqa: F401  (loads the CUDA library: fails where it cannot run)
    except (ImportError, OSError) as error:
        logger.warning("fa3-fwd is installed but does not load (%s); using cuDNN attention", error)
        return False
    return True


def resolve_plan(
    options: Acceleration,
    device: torch.device,
    capability: tuple[int, int] | None = None,
    sizes: ComponentBytes | None = None,
    budget: int | None = None,
    has_triton: bool | None = None,
    has_fa3: bool | None = None,
) -> AccelerationPlan:
    """Decide every lever for `device` (a CUDA device of `capability`, or the CPU). Pure but for the
    package look-ups that `has_triton` and `has_fa3` replace."""
    notes: list[str] = []
    cuda = device.type == "cuda"
    if cuda and capability is None:
        capability = device_capability(device)
    has_triton = triton_available() if has_triton is None else has_triton
    has_fa3 = fa3_available() if has_fa3 is None else has_fa3
    hopper = cuda and capability is not None and capability >= HOPPER
    # torch.compile's GPU code generation is Triton, which needs Volta or newer.
    can_compile = (not cuda) or (has_triton and capability is not None and capability >= (7, 0))

    compile_ = options.compile == "on" or (options.compile == "auto" and cuda and can_compile)
    if compile_ and not can_compile:
        notes.append("compile: off (Triton needs a Volta or newer GPU)")
        compile_ = False

    # The fastest exact kernels measured at the 2B/14B shapes on an H100 (benchmarks/RESULTS.md):
    # FlashAttention-3 where installed, else cuDNN; elsewhere PyTorch's own choice is the safe one.
    exact = ("fa3" if has_fa3 else "cudnn") if hopper else "sdpa"
    attention = options.attention
    if attention == "fp8":
        attention = "fp8-triton"
    available = {
        "auto": True,
        "sdpa": True,
        "cudnn": cuda,
        "flash": cuda,
        "efficient": cuda,
        "triton": hopper and has_triton,
        "fa3": hopper and has_fa3,
        "fp8-fa3": hopper and has_fa3,
        "fp8-triton": hopper and has_triton,
    }
    if attention == "auto":
        attention = exact
    elif not available[attention]:
        needs = (
            "CUDA" if attention in ("cudnn", "flash", "efficient") else "a Hopper GPU and its kernel package"
        )
        notes.append(f"attention: {attention} needs {needs}; using {exact}")
        attention = exact

    frame_modulation = options.frame_modulation == "on" or (options.frame_modulation == "auto" and cuda)

    fp8_linear = options.fp8_linear
    if fp8_linear and cuda and (capability is None or capability < FP8_MATMUL):
        notes.append("fp8_linear: off (e4m3 matrix products need an Ada, Hopper or newer GPU)")
        fp8_linear = False

    offload = options.offload
    if not cuda:
        if offload not in ("auto", "none"):
            notes.append(f"offload: {offload} has no effect without a GPU")
        offload = "none"
    elif offload == "auto":
        offload = choose_offload(budget, sizes) if sizes is not None and budget is not None else "none"
    vae_tiling = options.vae_tiling if cuda else "off"

    return AccelerationPlan(
        compile=compile_,
        attention=attention,
        frame_modulation=frame_modulation,
        fp8_linear=fp8_linear,
        guidance_interval=options.guidance_interval,
        cache_interval=options.cache_interval,
        cache_window=options.cache_window,
        offload=offload,
        vae_tiling=vae_tiling,
        memory_budget_bytes=None
        if options.memory_budget_gib is None
        else int(options.memory_budget_gib * GIB),
        notes=tuple(notes),
    )


def vision_tower(text_encoder: nn.Module) -> nn.Module | None:
    inner = getattr(text_encoder, "model", text_encoder)
    return getattr(inner, "visual", None)
