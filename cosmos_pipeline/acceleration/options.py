"""What a user asks of the GPU (`Acceleration`) and what was decided for a device (`AccelerationPlan`).

Plain data, no torch: settings, the command line and the flows import these without loading PyTorch.
`step_kinds` is the fast mode's denoising schedule, which the generation loop reads step by step.
"""

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
