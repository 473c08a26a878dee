"""Acceleration: what is picked on which device, that the default mode keeps the plain call's output,
and that the fast-mode and memory levers run on the embedded model and move the output boundedly."""

import pydantic
import pytest
import torch
import torch.nn.functional as F

from cosmos_pipeline.acceleration import kernels
from cosmos_pipeline.acceleration.apply import apply_acceleration, current_plan
from cosmos_pipeline.acceleration.attention import attention
from cosmos_pipeline.acceleration.memory import place, use_tiled_decode, vae_tiling
from cosmos_pipeline.acceleration.options import Acceleration, AccelerationPlan, forward_count, step_kinds
from cosmos_pipeline.acceleration.plan import ComponentBytes, choose_offload, decode_bytes, resolve_plan
from cosmos_pipeline.generate import generate
from cosmos_pipeline.loading import PipelineKey, load_pipeline

from .conftest import tiny_request

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)
GIB = 2**30
# Weight bytes of the real 2B and 14B pipelines in bf16 (benchmarks/RESULTS.md).
SIZES_2B = ComponentBytes(int(15.44 * GIB), int(1.25 * GIB), int(3.84 * GIB), int(0.24 * GIB), 2048)
SIZES_14B = ComponentBytes(int(15.44 * GIB), int(1.25 * GIB), int(26.76 * GIB), int(0.24 * GIB), 5120)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# ----------------------------------------------------------------------------- options and selection


def test_presets_and_validation():
    assert Acceleration.preset("default") == Acceleration()
    assert Acceleration.preset("fast").attention == "fp8"
    assert Acceleration.preset("fast", cache_interval=3).cache_interval == 3
    assert Acceleration.preset("low-memory").offload == "model"
    with pytest.raises(pydantic.ValidationError, match="guidance_interval"):
        Acceleration(guidance_interval=(0.8, 0.2))
    with pytest.raises(pydantic.ValidationError, match="cache_window"):
        Acceleration(cache_window=(0.5, 1.5))
    with pytest.raises(pydantic.ValidationError):
        Acceleration(turbo=True)


def test_cpu_keeps_the_plain_call():
    plan = resolve_plan(Acceleration(), CPU)
    assert plan == AccelerationPlan()  # nothing changes: bit-identical to diffusers
    assert plan.exact

    fast = resolve_plan(Acceleration.preset("fast"), CPU, has_triton=True)
    assert fast.attention == "sdpa" and any("fp8-triton" in note for note in fast.notes)
    assert fast.fp8_linear  # torch._scaled_mm runs on the CPU too (slowly): the lever stays testable
    assert fast.guidance_interval == (0.25, 0.75) and fast.cache_interval == 2
    assert not fast.exact
    assert resolve_plan(Acceleration(offload="model", vae_tiling="on"), CPU).offload == "none"


def test_hopper_picks_the_measured_fastest_exact_kernels():
    plan = resolve_plan(Acceleration(), CUDA, capability=(9, 0), has_triton=True, has_fa3=False)
    assert (plan.compile, plan.attention, plan.frame_modulation) == (True, "cudnn", True)
    assert plan.exact and not plan.notes
    with_fa3 = resolve_plan(Acceleration(), CUDA, capability=(9, 0), has_triton=True, has_fa3=True)
    assert with_fa3.attention == "fa3"

    fast = resolve_plan(Acceleration.preset("fast"), CUDA, capability=(9, 0), has_triton=True, has_fa3=True)
    assert fast.attention == "fp8-triton" and fast.fp8_linear and not fast.notes
    named = resolve_plan(Acceleration(attention="fp8-fa3"), CUDA, capability=(9, 0), has_fa3=True)
    assert named.attention == "fp8-fa3"


def test_other_gpus_fall_back_cleanly():
    ampere = resolve_plan(Acceleration.preset("fast"), CUDA, capability=(8, 0), has_triton=True, has_fa3=True)
    assert ampere.compile and ampere.frame_modulation
    assert ampere.attention == "sdpa" and not ampere.fp8_linear
    assert len(ampere.notes) == 2  # both FP8 levers say why they are off

    ada = resolve_plan(Acceleration.preset("fast"), CUDA, capability=(8, 9), has_triton=True)
    assert ada.fp8_linear and ada.attention == "sdpa"

    pascal = resolve_plan(Acceleration(compile="on"), CUDA, capability=(6, 1), has_triton=True)
    assert not pascal.compile and "compile" in pascal.notes[0]
    no_triton = resolve_plan(Acceleration(), CUDA, capability=(9, 0), has_triton=False, has_fa3=False)
    assert not no_triton.compile and no_triton.attention == "cudnn"


@pytest.mark.parametrize(
    ("sizes", "budget_gib", "expected"),
    [
        (SIZES_2B, 79, "none"),  # an 80 GB H100: everything stays
        (SIZES_2B, 20, "text_encoder"),  # a 24 GB card
        (SIZES_2B, 12, "model"),
        (SIZES_14B, 79, "none"),
        (SIZES_14B, 45, "text_encoder"),
        (SIZES_14B, 40, "model"),
    ],
)
def test_offload_follows_the_memory_budget(sizes, budget_gib, expected):
    assert choose_offload(budget_gib * GIB, sizes) == expected
    plan = resolve_plan(Acceleration(), CUDA, capability=(9, 0), sizes=sizes, budget=budget_gib * GIB)
    assert plan.offload == expected
    assert resolve_plan(Acceleration(offload="none"), CUDA, (9, 0), sizes, budget_gib * GIB).offload == "none"


def test_step_schedule():
    default = AccelerationPlan()
    assert step_kinds(default, 36, do_cfg=True) == ["cfg"] * 36
    assert step_kinds(default, 36, do_cfg=False) == ["cond"] * 36

    fast = resolve_plan(Acceleration.preset("fast"), CPU)
    kinds = step_kinds(fast, 36, do_cfg=True)
    assert forward_count(kinds) == 41
    assert kinds[:9] == ["cond"] * 9 and kinds[9:18] == ["cfg"] * 9  # guidance on [0.25, 0.75)
    assert [i for i, kind in enumerate(kinds) if kind == "reuse"] == list(range(19, 36, 2))
    assert step_kinds(fast, 1, do_cfg=True) == ["cond"]  # a first step always runs the transformer


# ----------------------------------------------------------------------------- on the embedded model


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(PipelineKey.for_request(tiny_request()))


@pytest.fixture(scope="module")
def plain(pipe):
    return generate(pipe, tiny_request(num_inference_steps=4), options=Acceleration.preset("plain"))


def test_default_mode_on_cpu_is_bit_identical_to_the_plain_call(pipe, plain):
    result = generate(pipe, tiny_request(num_inference_steps=4), options=Acceleration())
    assert torch.equal(result.latents, plain.latents)
    assert (result.frames == plain.frames).all()
    assert result.acceleration["attention"] == "sdpa" and result.acceleration["vae_tiled"] is False
    assert result.timings.forwards == 8


def test_per_frame_modulation_matches_the_diffusers_forward():
    request = tiny_request(num_inference_steps=3, dtype="float32")
    pipe = load_pipeline(PipelineKey.for_request(request))
    reference = generate(pipe, request, options=Acceleration.preset("plain"))
    # Any kernel but sdpa installs the project's attention processor; off the GPU it runs SDPA.
    result = generate(pipe, request, options=Acceleration(frame_modulation="on", attention="triton"))
    assert result.acceleration["frame_modulation"]
    assert rel_err(result.latents, reference.latents) < 1e-5  # float32: the same math, other GEMM shapes


@pytest.mark.parametrize(
    ("lever", "forwards", "bound"),
    [
        (Acceleration(guidance_interval=(0.25, 0.75)), 6, 1.0),
        (Acceleration(cache_interval=2, cache_window=(0.5, 1.0)), 6, 0.5),
        (Acceleration(fp8_linear=True), 8, 0.5),
        (Acceleration.preset("fast"), 5, 1.0),
    ],
    ids=["guidance-interval", "step-cache", "fp8-linear", "fast-preset"],
)
def test_fast_levers_run_on_cpu_and_move_the_output_boundedly(pipe, plain, lever, forwards, bound):
    result = generate(pipe, tiny_request(num_inference_steps=4), options=lever)
    assert result.timings.forwards == forwards
    assert torch.isfinite(result.latents).all()
    assert 0 < rel_err(result.latents, plain.latents) < bound


def test_levers_are_undone_when_the_options_change(pipe, plain):
    generate(pipe, tiny_request(num_inference_steps=4), options=Acceleration.preset("fast"))
    assert any(isinstance(m, kernels.FP8Linear) for m in pipe.transformer.modules())
    again = generate(pipe, tiny_request(num_inference_steps=4), options=Acceleration.preset("plain"))
    assert not any(isinstance(m, kernels.FP8Linear) for m in pipe.transformer.modules())
    assert torch.equal(again.latents, plain.latents)
    assert apply_acceleration(pipe, Acceleration.preset("plain")) is current_plan(pipe)  # a no-op


def test_text_encoder_offload_keeps_the_output(pipe, plain):
    """The placement code path on the CPU: the encoder's weights go to (pinnable) host copies and back."""
    request = tiny_request(num_inference_steps=4)
    place(pipe, current_plan(pipe), "text_encoder", CPU)
    try:
        pipe.__dict__.pop("_cosmos_prompt_cache", None)
        offloaded = generate(pipe, request)
        assert pipe.__dict__["_cosmos_text_encoder_offload"] is not None
    finally:
        place(pipe, AccelerationPlan(offload="text_encoder"), "none", CPU)
    assert "_cosmos_text_encoder_offload" not in pipe.__dict__
    assert torch.equal(offloaded.latents, plain.latents)


def test_vae_tiling_only_for_the_duration(pipe):
    assert not use_tiled_decode(AccelerationPlan(vae_tiling="auto"), CPU, 704, 1280, 93)
    assert use_tiled_decode(AccelerationPlan(vae_tiling="on"), CPU, 64, 64, 9)
    assert not pipe.vae.use_tiling
    with vae_tiling(pipe.vae, True):
        assert pipe.vae.use_tiling
    assert not pipe.vae.use_tiling
    assert decode_bytes(704, 1280, 93) > decode_bytes(704, 1280, 93, tiled=True)


def test_regional_compile_builds_one_graph_for_all_blocks(pipe, plain):
    """On the CPU through inductor: the blocks share one compiled graph, and the output stays close."""
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor

    torch._dynamo.reset()
    counters.clear()
    # Before its first CPU kernel, inductor compiles and runs a probe program for each vector ISA the CPU
    # lists (about 8 s on a fresh 2-core machine, a third of this test); the CPU's own list is trusted here.
    try:
        with inductor.patch({"cpp.vec_isa_ok": True}):
            result = generate(
                pipe,
                tiny_request(num_inference_steps=4),
                options=Acceleration(compile="on", frame_modulation="on"),
            )
        assert counters["stats"]["unique_graphs"] == 1
    finally:
        generate(pipe, tiny_request(num_inference_steps=4), options=Acceleration.preset("plain"))
        torch._dynamo.reset()
    assert rel_err(result.latents, plain.latents) < 0.05  # bf16 rounding differs where inductor fuses


# ----------------------------------------------------------------------------- kernels (CPU paths)


def test_attention_kernels_fall_back_to_sdpa_off_the_gpu():
    q, k, v = (torch.randn(1, 40, 2, 64).transpose(1, 2) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2, 3)
    for kernel in ("sdpa", "triton", "fp8-triton", "fa3"):
        assert torch.equal(attention(q, k, v, kernel), expected)


def test_fp8_attention_error_is_bounded_and_centring_removes_a_common_key_component():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 512, 64) for _ in range(3))
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert rel_err(kernels.fp8_attention_reference(q, k, v), exact) < 0.07

    shared = k + 5 * torch.randn(1, 2, 1, 64)  # a component shared by all tokens, ~5x their spread
    exact = F.scaled_dot_product_attention(q.double(), shared.double(), v.double())
    assert rel_err(kernels.fp8_attention_reference(q, shared, v), exact) > 0.1
    centred, values, value_mean = kernels.smooth_kv(shared, v)
    assert rel_err(kernels.fp8_attention_reference(q, centred, values) + value_mean, exact) < 0.07


def test_fp8_linear_is_close_and_can_be_undone():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(3, 10, 64)
    fp8 = kernels.FP8Linear(linear)
    assert fp8(x).shape == (3, 10, 32)
    with torch.no_grad():
        assert rel_err(fp8(x), linear(x)) < 0.06
    assert fp8.restore() is linear
    assert kernels.fp8_linear_supported(linear) and not kernels.fp8_linear_supported(torch.nn.Linear(10, 32))
