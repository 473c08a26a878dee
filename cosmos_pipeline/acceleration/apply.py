"""Applying a plan to a loaded pipeline: the transformer levers (attention kernel, FP8 linears, per-frame
modulation, regional compile) and the placement. Idempotent; re-applying other options undoes the
previous ones first."""

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from cosmos_pipeline.acceleration.attention import CosmosAttnProcessor
from cosmos_pipeline.acceleration.memory import place
from cosmos_pipeline.acceleration.modulation import FrameModulatedBlock, frame_modulation_hook
from cosmos_pipeline.acceleration.options import EXACT_KERNELS, Acceleration, AccelerationPlan
from cosmos_pipeline.acceleration.plan import GIB, ComponentBytes, resolve_plan
from cosmos_pipeline.cfg_parallel import CFG_PARALLEL_ATTRIBUTE

logger = logging.getLogger(__name__)

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
    from cosmos_pipeline.acceleration.kernels import fp8_linear_supported

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
        from cosmos_pipeline.acceleration.kernels import FP8Linear

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
            frame_modulation_hook(blocks), _HOOK
        )
        state.hooked = True

    if plan.compile:
        # Regional compilation: the blocks share one code object, so one compiled graph serves them all.
        for block in blocks:
            block.compile(fullgraph=True, dynamic=False)
        state.compiled = blocks


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
        place(pipe, previous, plan.offload, device)
    pipe.__dict__["_cosmos_acceleration"] = plan
    return plan
