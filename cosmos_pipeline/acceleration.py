"""How a generation uses the GPU: the default mode, the opt-in fast mode, and the memory plan.

- Default mode (same math, faster; picked automatically per device): regional `torch.compile` of the
  transformer blocks, the fastest exact attention kernel measured on the device (on Hopper:
  FlashAttention-3 where the optional `fa3-fwd` package is installed, else cuDNN), and the adaLN
  modulation computed once per latent frame instead of once per token. On the CPU nothing changes,
  so the output is bit-identical to the plain diffusers call.
- Fast mode (opt-in; the output drifts, by amounts measured in benchmarks/RESULTS.md): FP8 attention
  (`cosmos_pipeline.kernels`) and FP8 linears, classifier-free guidance on an interval of the steps
  only, and reuse of the previous step's velocity on alternate steps (step caching).
- Memory plan: the text encoder waits in pinned host memory and visits the GPU only to encode a new
  prompt; the VAE decodes in tiles only when free memory is short; or whole-model CPU offload.

`resolve_plan` turns options into decisions for one device (pure, so tests can fake a GPU),
`apply_acceleration` applies them to a loaded pipeline (idempotent; re-applying other options
undoes the previous ones first), and `cosmos_pipeline.generate` reads the per-step levers.
"""

import contextlib
import functools
import importlib.util
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from cosmos_pipeline.cfg_parallel import CFG_PARALLEL_ATTRIBUTE

logger = logging.getLogger(__name__)

Toggle = Literal["auto", "on", "off"]
# "fp8" is the project's Triton kernel ("fp8-triton"): the one the fast mode's end-to-end runs and drift
# were measured with. FlashAttention-3's FP8 kernel ("fp8-fa3", K and V centred first) measured 16% faster
# per fast-mode forward at the same error, but only per forward: it runs when asked for by name.
AttentionKernel = Literal[
    "auto", "sdpa", "cudnn", "flash", "efficient", "triton", "fa3", "fp8", "fp8-fa3", "fp8-triton"
]
Offload = Literal["auto", "none", "text_encoder", "model"]
Preset = Literal["plain", "default", "fast", "low-memory"]
StepKind = Literal["cfg", "cond", "reuse"]  # both forwards / the conditional forward only / no forward

EXACT_KERNELS = ("sdpa", "cudnn", "flash", "efficient", "triton", "fa3")
HOPPER = (9, 0)
FP8_MATMUL = (8, 9)  # Ada and newer have e4m3 tensor cores
GIB = 2**30

# Working memory above the weights, measured on an H100 (benchmarks/RESULTS.md) and scaled linearly.
DECODE_BYTES_PER_PIXEL = 128.0  # untiled Wan VAE decode: 9.9 GiB for 704 x 1280 x 93 output pixels
TILED_DECODE_BYTES_PER_PIXEL = 28.0  # tiled: 2.2 GiB
DENOISE_BYTES_PER_TOKEN_CHANNEL = 40.0  # one plain forward: 6.2 GiB (2B) and 15.5 GiB (14B) at 84,480 tokens
ENCODE_BYTES = int(1.5 * GIB)  # prompt encoding (512 tokens) on top of all weights: 1.2 GiB measured


class Acceleration(BaseModel):
    """Acceleration options; "auto" picks what was measured best on the device at hand."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Default mode: exact levers (the output stays within bf16 noise of the plain call).
    compile: Toggle = "auto"  # regional torch.compile of the transformer blocks
    attention: AttentionKernel = "auto"  # "fp8" is a fast-mode lever
    frame_modulation: Toggle = "auto"  # adaLN shift/scale/gate once per latent frame, not per token
    # Fast mode: fewer or cheaper operations; the output drifts.
    fp8_linear: bool = False  # e4m3 matrix products for the transformer blocks' token-wise linears
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # [start, end) fraction of the steps with CFG
    cache_interval: int = Field(default=1, ge=1)  # n > 1: the transformer runs every n-th step in the window
    # [start, end) fraction of the steps where a step may reuse the previous velocity
    cache_window: tuple[float, float] = (0.5, 1.0)
    # Memory plan.
    offload: Offload = "auto"
    vae_tiling: Toggle = "auto"  # auto: tiled only when free memory is below the untiled decode's need
    memory_budget_gib: float | None = Field(default=None, gt=0)  # plan for less memory than the card has

    @model_validator(mode="after")
    def _fractions(self) -> "Acceleration":
        for name in ("guidance_interval", "cache_window"):
            start, end = getattr(self, name)
            if not 0.0 <= start < end <= 1.0:
                raise ValueError(f"{name} must satisfy 0 <= start < end <= 1, got {(start, end)}")
        return self

    @classmethod
    def preset(cls, name: Preset, **overrides) -> "Acceleration":
        """Named settings: `plain` is the diffusers call as-is, `default` what runs unless told otherwise."""
        presets: dict[str, dict] = {
            "plain": dict(
                compile="off", attention="sdpa", frame_modulation="off", offload="none", vae_tiling="off"
            ),
            "default": {},
            # CFG only on the middle half of the steps (guidance matters least at the noisiest and the
            # cleanest noise levels; Kynkaenniemi et al. 2024), the velocity reused on every other step
            # of the second half: 41 forwards instead of 72.
            "fast": dict(
                attention="fp8",
                fp8_linear=True,
                guidance_interval=(0.25, 0.75),
                cache_interval=2,
                cache_window=(0.5, 1.0),
            ),
            "low-memory": dict(offload="model", vae_tiling="on"),
        }
        return cls(**{**presets[name], **overrides})


@dataclass(frozen=True)
class AccelerationPlan:
    """The decisions for one device; recorded with every result."""

    compile: bool = False
    attention: str = "sdpa"  # one of EXACT_KERNELS, "fp8-fa3" or "fp8-triton"
    frame_modulation: bool = False
    fp8_linear: bool = False
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    cache_interval: int = 1
    cache_window: tuple[float, float] = (0.5, 1.0)
    offload: str = "none"  # "none" | "text_encoder" | "model"
    vae_tiling: str = "off"  # "on" | "off" | "auto" (decided at each decode)
    memory_budget_bytes: int | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def transformer_levers(self) -> tuple:
        return (self.compile, self.attention, self.frame_modulation, self.fp8_linear)

    @property
    def exact(self) -> bool:
        """True when the output stays within bf16 noise of the plain call."""
        return (
            self.attention in EXACT_KERNELS
            and not self.fp8_linear
            and self.guidance_interval == (0.0, 1.0)
            and self.cache_interval == 1
        )

    def as_dict(self) -> dict:
        return asdict(self)


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
            text_encoder_vision=module_bytes(_vision_tower(pipe.text_encoder) or nn.Module()),
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


# ----------------------------------------------------------------------------- the denoising schedule


def step_kinds(plan: AccelerationPlan, num_steps: int, do_cfg: bool) -> list[StepKind]:
    """What each denoising step runs: both CFG forwards, the conditional one, or none (reuse the last).

    All `cfg` (or all `cond` without guidance) unless fast-mode levers are set, which is the plain call.
    """
    guide_start, guide_end = plan.guidance_interval
    cache_start, cache_end = plan.cache_window
    first_cached = math.ceil(cache_start * num_steps)
    kinds: list[StepKind] = []
    for i in range(num_steps):
        fraction = i / num_steps
        in_window = plan.cache_interval > 1 and cache_start <= fraction < cache_end and i > 0
        if in_window and (i - first_cached) % plan.cache_interval:
            kinds.append("reuse")
        elif do_cfg and guide_start <= fraction < guide_end:
            kinds.append("cfg")
        else:
            kinds.append("cond")
    return kinds


def forward_count(kinds: list[StepKind]) -> int:
    return sum({"cfg": 2, "cond": 1, "reuse": 0}[kind] for kind in kinds)


# ----------------------------------------------------------------------------- attention


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel: str) -> torch.Tensor:
    """Softmax attention of (B, H, N, D) tensors with the named kernel; returns (B, N, H * D).

    The Triton kernels cover head sizes 64 and 128 (FP8 tensor cores need 32 or more), FlashAttention-3
    64 to 256; other shapes take PyTorch's SDPA.
    """
    if kernel in ("fa3", "fp8-fa3") and query.shape[-1] in (64, 96, 128, 192, 256) and query.is_cuda:
        import fa3_fwd_interface

        from cosmos_pipeline import kernels

        if kernel == "fa3":
            out = fa3_fwd_interface.flash_attn_func(
                query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
            )
        else:
            key, value, value_mean = kernels.smooth_kv(key, value)
            (q8, q_scale), (k8, k_scale), (v8, v_scale) = (
                kernels.quantize_per_head(x) for x in (query, key, value)
            )
            out = fa3_fwd_interface.flash_attn_func(
                q8.transpose(1, 2).contiguous(),
                k8.transpose(1, 2).contiguous(),
                v8.transpose(1, 2).contiguous(),
                q_descale=q_scale,
                k_descale=k_scale,
                v_descale=v_scale,
            )
            out = out + value_mean.transpose(1, 2).to(out.dtype)
        return out.flatten(2, 3)  # FlashAttention works in (B, N, H, D), the layout of the projections
    if kernel == "cudnn":
        out = torch.ops.aten._scaled_dot_product_cudnn_attention(query, key, value, None, False)[0]
    elif kernel == "flash":
        out = torch.ops.aten._scaled_dot_product_flash_attention(query, key, value)[0]
    elif kernel == "efficient":
        out = torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, None, False)[0]
    elif kernel in ("triton", "fp8-triton") and query.shape[-1] in (64, 128) and query.is_cuda:
        from cosmos_pipeline import kernels

        out = (kernels.fp8_attention if kernel == "fp8-triton" else kernels.triton_attention)(
            query, key, value
        )
    else:
        out = F.scaled_dot_product_attention(query, key, value)
    return out.transpose(1, 2).flatten(2, 3)


class CosmosAttnProcessor:
    """diffusers' `CosmosAttnProcessor2_0` with the attention kernel chosen by the plan.

    Same projections, QK norms and rotary embedding; the kernel reads the (B, H, N, D) views in place.
    """

    def __init__(self, kernel: str) -> None:
        self.kernel = kernel

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        from diffusers.models.embeddings import apply_rotary_emb

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.norm_q(attn.to_q(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2))
        key = attn.norm_k(attn.to_k(context).unflatten(2, (attn.heads, -1)).transpose(1, 2))
        value = attn.to_v(context).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
            key = apply_rotary_emb(key, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
        if attention_mask is not None:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
            out = out.transpose(1, 2).flatten(2, 3)
        else:
            out = attention(query, key, value, self.kernel)
        return attn.to_out[1](attn.to_out[0](out.type_as(query)))


# ----------------------------------------------------------------------------- per-frame modulation


def _modulated(
    norm, hidden_states: torch.Tensor, embedded_timestep: torch.Tensor, temb: torch.Tensor | None, parts: int
):
    """`CosmosAdaLayerNorm(Zero)` with (B, T, C) embeddings: the modulation is computed per latent frame.

    diffusers broadcasts the timestep embedding to every token first (84,480 rows at 720p) and runs the
    modulation MLP on each; here it runs on T rows and broadcasts the result. Same math per element.
    """
    emb = norm.linear_2(norm.linear_1(norm.activation(embedded_timestep)))
    if temb is not None:
        emb = emb + temb[..., : emb.shape[-1]]
    chunks = emb.unsqueeze(2).chunk(parts, dim=-1)  # each (B, T, 1, C)
    batch, tokens, channels = hidden_states.shape
    frames = emb.shape[1]
    normed = norm.norm(hidden_states).view(batch, frames, tokens // frames, channels)
    out = (normed * (1 + chunks[1]) + chunks[0]).view(batch, tokens, channels)
    return out, (chunks[2] if parts == 3 else None)


def _gated(hidden_states: torch.Tensor, gate: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    batch, tokens, channels = hidden_states.shape
    return hidden_states + (gate * update.view(batch, gate.shape[1], -1, channels)).view(
        batch, tokens, channels
    )


class FrameModulatedBlock(nn.Module):
    """A `CosmosTransformerBlock` run with per-frame modulation; shares the block's weights."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(
        self,
        hidden_states: torch.Tensor,
        text_context: torch.Tensor,
        embedded_timestep: torch.Tensor,
        temb: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor],
        extra_pos_emb: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        block = self.block
        if extra_pos_emb is not None:
            hidden_states = hidden_states + extra_pos_emb
        normed, gate = _modulated(block.norm1, hidden_states, embedded_timestep, temb, 3)
        hidden_states = _gated(hidden_states, gate, block.attn1(normed, image_rotary_emb=image_rotary_emb))
        normed, gate = _modulated(block.norm2, hidden_states, embedded_timestep, temb, 3)
        update = block.attn2(normed, encoder_hidden_states=text_context, attention_mask=attention_mask)
        hidden_states = _gated(hidden_states, gate, update)
        normed, gate = _modulated(block.norm3, hidden_states, embedded_timestep, temb, 3)
        return _gated(hidden_states, gate, block.ff(normed))


def _frame_modulation_hook(blocks: list[FrameModulatedBlock]):
    """A diffusers `ModelHook` replacing `CosmosTransformer3DModel.forward` by the per-frame version.

    Falls back to the original forward for inputs it does not cover (ControlNet residuals, image
    context, one timestep per sample, temporal patches).
    """
    from diffusers.hooks import ModelHook

    class FrameModulation(ModelHook):
        def new_forward(
            self,
            module,
            hidden_states: torch.Tensor,
            timestep: torch.Tensor,
            encoder_hidden_states: torch.Tensor,
            block_controlnet_hidden_states: list[torch.Tensor] | None = None,
            attention_mask: torch.Tensor | None = None,
            fps: int | None = None,
            condition_mask: torch.Tensor | None = None,
            padding_mask: torch.Tensor | None = None,
            return_dict: bool = True,
        ):
            config = module.config
            if (
                block_controlnet_hidden_states is not None
                or isinstance(encoder_hidden_states, tuple)
                or timestep.ndim != 5
                or config.patch_size[0] != 1
            ):
                return self.fn_ref.original_forward(
                    hidden_states, timestep, encoder_hidden_states, block_controlnet_hidden_states,
                    attention_mask, fps, condition_mask, padding_mask, return_dict,
                )  # fmt: skip
            return _frame_modulated_forward(
                module, blocks, hidden_states, timestep, encoder_hidden_states, attention_mask, fps,
                condition_mask, padding_mask, return_dict,
            )  # fmt: skip

    return FrameModulation()


def _frame_modulated_forward(
    module,
    blocks,
    hidden_states,
    timestep,
    encoder_hidden_states,
    attention_mask,
    fps,
    condition_mask,
    padding_mask,
    return_dict,
):
    """`CosmosTransformer3DModel.forward` (diffusers 0.42) with the timestep embeddings kept per frame."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput
    from torchvision import transforms

    config = module.config
    batch_size, _, num_frames, height, width = hidden_states.shape

    # 1. Condition and padding masks as extra channels
    if condition_mask is not None:
        hidden_states = torch.cat([hidden_states, condition_mask], dim=1)
    if config.concat_padding_mask:
        padding_mask = transforms.functional.resize(
            padding_mask, list(hidden_states.shape[-2:]), interpolation=transforms.InterpolationMode.NEAREST
        )
        hidden_states = torch.cat(
            [hidden_states, padding_mask.unsqueeze(2).repeat(batch_size, 1, num_frames, 1, 1)], dim=1
        )
    if attention_mask is not None:
        attention_mask = attention_mask.unsqueeze(1).unsqueeze(1)

    # 2-3. Positional embeddings and patches
    image_rotary_emb = module.rope(hidden_states, fps=fps)
    extra_pos_emb = module.learnable_pos_embed(hidden_states) if config.extra_pos_embed_type else None
    _, p_h, p_w = config.patch_size
    rows, cols = height // p_h, width // p_w
    hidden_states = module.patch_embed(hidden_states).flatten(1, 3)

    # 4. Timestep embeddings, one per latent frame: (B, T, C)
    temb, embedded_timestep = module.time_embed(hidden_states, timestep.flatten())
    temb, embedded_timestep = (
        temb.view(batch_size, num_frames, -1),
        embedded_timestep.view(batch_size, num_frames, -1),
    )

    # 5. Text context
    text_context = (
        module.crossattn_proj(encoder_hidden_states)
        if config.use_crossattn_projection
        else encoder_hidden_states
    )

    # 6. Blocks
    for block in blocks:
        hidden_states = block(
            hidden_states,
            text_context,
            embedded_timestep,
            temb,
            image_rotary_emb,
            extra_pos_emb,
            attention_mask,
        )

    # 7. Output norm, projection and unpatchify (diffusers' permutation, which is correct as written)
    hidden_states, _ = _modulated(module.norm_out, hidden_states, embedded_timestep, temb, 2)
    hidden_states = module.proj_out(hidden_states)
    hidden_states = hidden_states.unflatten(2, (p_h, p_w, 1, -1)).unflatten(1, (num_frames, rows, cols))
    hidden_states = hidden_states.permute(0, 7, 1, 6, 2, 4, 3, 5).flatten(6, 7).flatten(4, 5).flatten(2, 3)
    return Transformer2DModelOutput(sample=hidden_states) if return_dict else (hidden_states,)


# --------------------------------------------------------------------------- the transformer levers

_HOOK = "cosmos_frame_modulation"


@dataclass
class _TransformerState:
    """What was changed on a transformer, so that it can be undone."""

    levers: tuple = (False, "sdpa", False, False)
    processors: dict[str, object] = field(default_factory=dict)
    fp8_swaps: list[tuple[nn.Module, str]] = field(default_factory=list)
    compiled: list[nn.Module] = field(default_factory=list)
    hooked: bool = False


def _fp8_targets(block: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Linear]]:
    """The linears that see every video token (the text-side and modulation ones are tiny)."""
    from cosmos_pipeline.kernels import fp8_linear_supported

    for name, module in block.named_modules():
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            token_wise = full.startswith(("attn1.", "ff.")) or full in ("attn2.to_q", "attn2.to_out.0")
            if isinstance(child, nn.Linear) and token_wise and fp8_linear_supported(child):
                yield module, child_name, child


def _revert_transformer(transformer: nn.Module, state: _TransformerState) -> None:
    from diffusers.hooks import HookRegistry

    for module in state.compiled:
        module._compiled_call_impl = None
    if state.hooked:
        HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(_HOOK, recurse=False)
    for parent, name in state.fp8_swaps:
        setattr(parent, name, getattr(parent, name).restore())
    for name, processor in state.processors.items():
        transformer.get_submodule(name).set_processor(processor)


def accelerate_transformer(transformer: nn.Module, plan: AccelerationPlan) -> None:
    """Apply the plan's transformer levers (attention kernel, FP8 linears, per-frame modulation, compile)."""
    state: _TransformerState = transformer.__dict__.setdefault("_cosmos_state", _TransformerState())
    if state.levers == plan.transformer_levers:
        return
    _revert_transformer(transformer, state)
    state = transformer.__dict__["_cosmos_state"] = _TransformerState(levers=plan.transformer_levers)

    if plan.fp8_linear:
        from cosmos_pipeline.kernels import FP8Linear

        for block in transformer.transformer_blocks:
            for parent, name, linear in list(_fp8_targets(block)):
                setattr(parent, name, FP8Linear(linear))
                state.fp8_swaps.append((parent, name))

    if plan.attention != "sdpa":
        # Cross-attention (512 text keys, ~1% of the FLOPs) stays exact.
        exact = plan.attention if plan.attention in EXACT_KERNELS else plan.attention.removeprefix("fp8-")
        exact = "cudnn" if exact == "triton" and plan.attention == "fp8-triton" else exact
        for index, block in enumerate(transformer.transformer_blocks):
            for attn_name, kernel in (("attn1", plan.attention), ("attn2", exact)):
                attn = getattr(block, attn_name)
                state.processors[f"transformer_blocks.{index}.{attn_name}"] = attn.processor
                attn.set_processor(CosmosAttnProcessor(kernel))

    blocks: list[nn.Module] = list(transformer.transformer_blocks)
    if plan.frame_modulation:
        from diffusers.hooks import HookRegistry

        blocks = [FrameModulatedBlock(block) for block in transformer.transformer_blocks]
        HookRegistry.check_if_exists_or_initialize(transformer).register_hook(
            _frame_modulation_hook(blocks), _HOOK
        )
        state.hooked = True

    if plan.compile:
        # Regional compilation: the blocks share one code object, so one compiled graph serves them all.
        for block in blocks:
            block.compile(fullgraph=True, dynamic=False)
        state.compiled = blocks


# ----------------------------------------------------------------------------- memory


class TextEncoderOffload:
    """The text encoder's weights wait in pinned host memory and visit the GPU only to encode.

    Weights never change at inference, so leaving the GPU needs no copy back: the GPU tensors are
    dropped and the host copies kept. The vision tower stays on the host: Cosmos feeds the encoder
    text only.
    """

    def __init__(self, text_encoder: nn.Module, device: torch.device) -> None:
        self.device = device
        text_encoder.to("cpu")
        visual = _vision_tower(text_encoder)
        skip = set() if visual is None else {id(t) for t in (*visual.parameters(), *visual.buffers())}
        self._tensors: list[tuple[torch.Tensor, torch.Tensor]] = []
        for tensor in (*text_encoder.parameters(), *text_encoder.buffers()):
            if id(tensor) in skip:
                continue
            with contextlib.suppress(RuntimeError):  # no pinnable memory: pageable copies still work
                tensor.data = tensor.data.pin_memory()
            self._tensors.append((tensor, tensor.data))

    def load(self) -> None:
        for tensor, host in self._tensors:
            tensor.data = host.to(self.device, non_blocking=True)

    def unload(self) -> None:
        for tensor, host in self._tensors:
            tensor.data = host

    def restore(self, device: torch.device) -> None:
        """Back to an ordinary module on `device`."""
        self.unload()
        for tensor, host in self._tensors:
            tensor.data = host.to(device)


def _vision_tower(text_encoder: nn.Module) -> nn.Module | None:
    inner = getattr(text_encoder, "model", text_encoder)
    return getattr(inner, "visual", None)


@contextlib.contextmanager
def text_encoder_on_device(pipe) -> Iterator[None]:
    """The text encoder on the GPU for the duration (a no-op unless it is offloaded)."""
    offload: TextEncoderOffload | None = pipe.__dict__.get("_cosmos_text_encoder_offload")
    if offload is None:
        yield
        return
    offload.load()
    try:
        yield
    finally:
        offload.unload()


def available_bytes(device: torch.device, budget: int | None) -> int:
    """Memory a new allocation can get: free on the card plus PyTorch's cached blocks, within the budget."""
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    cached = torch.cuda.memory_reserved(device) - allocated
    return min(free + cached, (budget or total) - allocated)


def use_tiled_decode(
    plan: AccelerationPlan, device: torch.device, height: int, width: int, num_frames: int
) -> bool:
    if plan.vae_tiling != "auto":
        return plan.vae_tiling == "on"
    if device.type != "cuda":
        return False
    return available_bytes(device, plan.memory_budget_bytes) < decode_bytes(height, width, num_frames)


@contextlib.contextmanager
def vae_tiling(vae: nn.Module, enabled: bool) -> Iterator[None]:
    """Tiled decoding for the duration, if `enabled` and the VAE was not tiling already."""
    switch = enabled and not getattr(vae, "use_tiling", False)
    if switch:
        vae.enable_tiling()
    try:
        yield
    finally:
        if switch:
            vae.disable_tiling()


def _place(pipe, previous: AccelerationPlan | None, offload: str, device: torch.device) -> None:
    """Put the components where the offload plan wants them, undoing the previous plan's placement."""
    state: TextEncoderOffload | None = pipe.__dict__.pop("_cosmos_text_encoder_offload", None)
    if state is not None:
        state.restore(torch.device("cpu"))
    if previous is not None and previous.offload == "model":
        pipe.remove_all_hooks()
    if offload == "none":
        pipe.to(device)
    elif offload == "text_encoder":
        for name, component in pipe.components.items():
            if isinstance(component, nn.Module) and name != "text_encoder":
                component.to(device)
        pipe.__dict__["_cosmos_text_encoder_offload"] = TextEncoderOffload(pipe.text_encoder, device)
    else:
        pipe.enable_model_cpu_offload(device=device)


# ----------------------------------------------------------------------------- entry points


def current_plan(pipe) -> AccelerationPlan | None:
    return pipe.__dict__.get("_cosmos_acceleration")


def apply_acceleration(
    pipe, options: Acceleration | None = None, device: str | torch.device | None = None
) -> AccelerationPlan:
    """Apply `options` (default: `Acceleration()`) to `pipe` and return the plan; a no-op when unchanged.

    `device`: where the pipeline runs. Given, the components are placed there as the offload plan says
    (use this right after `from_pretrained` instead of `pipe.to(device)`, so a model that only fits
    offloaded never has to fit whole). Left out, the pipeline stays where it is.
    """
    options = Acceleration() if options is None else options
    placing = device is not None
    device = torch.device(device) if placing else pipe._execution_device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    previous = current_plan(pipe)
    budget = None
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        budget = (
            total if options.memory_budget_gib is None else min(total, int(options.memory_budget_gib * GIB))
        )
    plan = resolve_plan(options, device, sizes=ComponentBytes.of(pipe), budget=budget)
    if not placing and options.offload == "auto":
        # Nothing is moved unless asked: keep the current placement.
        plan = AccelerationPlan(**{**plan.as_dict(), "offload": previous.offload if previous else "none"})
    if previous == plan and not placing:
        return previous
    for note in plan.notes:
        logger.warning(note)

    accelerate_transformer(pipe.transformer, plan)
    parallel = pipe.__dict__.get(CFG_PARALLEL_ATTRIBUTE)  # a CFG-parallel replica gets the same levers
    if parallel is not None:
        accelerate_transformer(parallel.replica, plan)
    if placing or (previous.offload if previous else "none") != plan.offload:
        _place(pipe, previous, plan.offload, device)
    pipe.__dict__["_cosmos_acceleration"] = plan
    return plan
