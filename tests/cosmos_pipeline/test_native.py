"""Native checkpoints (issue 16): the embedded model written in NVIDIA's formats and read back.

The native files are built from the embedded model by the inverse of diffusers' renames (written out
here independently of `cosmos_pipeline.native`), with the keys NVIDIA's files carry beside the weights.
Sizes are read off the embedded model, never hard-coded.
"""

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_pipeline import distilled, native, tiny
from cosmos_pipeline.generate import generate
from cosmos_pipeline.guardrail import PassThroughSafetyChecker

from .conftest import tiny_request

# diffusers key fragment -> native key fragment, applied in this order.
TO_NATIVE = [
    ("transformer_blocks", "blocks"),
    ("norm1.linear_1", "adaln_modulation_self_attn.1"),
    ("norm1.linear_2", "adaln_modulation_self_attn.2"),
    ("norm2.linear_1", "adaln_modulation_cross_attn.1"),
    ("norm2.linear_2", "adaln_modulation_cross_attn.2"),
    ("norm3.linear_1", "adaln_modulation_mlp.1"),
    ("norm3.linear_2", "adaln_modulation_mlp.2"),
    ("attn1", "self_attn"),
    ("attn2", "cross_attn"),
    ("to_q", "q_proj"),
    ("to_k", "k_proj"),
    ("to_v", "v_proj"),
    ("to_out.0", "output_proj"),
    ("norm_q", "q_norm"),
    ("norm_k", "k_norm"),
    ("ff.net.0.proj", "mlp.layer1"),
    ("ff.net.2", "mlp.layer2"),
    ("patch_embed.proj", "x_embedder.proj.1"),
    ("norm_out.linear_1", "final_layer.adaln_modulation.1"),
    ("norm_out.linear_2", "final_layer.adaln_modulation.2"),
    ("proj_out", "final_layer.linear"),
    ("time_embed.t_embedder", "t_embedder.1"),
    ("time_embed.norm", "t_embedding_norm"),
]
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]  # NVIDIA's default targets


def to_native(key: str) -> str:
    for old, new in TO_NATIVE:
        key = key.replace(old, new)
    return key


def native_state(weights: dict[str, torch.Tensor], ema: bool) -> dict[str, torch.Tensor]:
    """What NVIDIA's files hold: `model.pt` (ema=True: training weights and EMA weights) or
    `model_ema_*.pt` (the EMA weights as `net.*`), with counters, RoPE tables and extra state."""
    prefix = "net_ema." if ema else "net."
    state = {prefix + to_native(k): v.clone() for k, v in weights.items()}
    if ema:  # the training weights, which must not be the ones taken
        state |= {"net." + to_native(k): v + 1.0 for k, v in weights.items()}
    state["net.accum_iteration"] = torch.tensor(1000)
    state[prefix + "pos_embedder.seq"] = torch.arange(16.0)
    state[prefix + "blocks.0.self_attn.attn_op._extra_state"] = torch.zeros(4, dtype=torch.uint8)
    state[prefix + "blocks.0.cross_attn.attn_op._extra_state"] = io.BytesIO(b"te")  # older Transformer Engine
    return state


def save_dcp(state: dict[str, torch.Tensor], folder: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=str(folder / "model"), no_dist=True)
    return folder  # the iter_N folder: its model/ is found


@pytest.fixture(scope="module")
def base() -> Path:
    return tiny.embedded_model_path(tiny.POST_TRAINED)


@pytest.fixture(scope="module")
def weights(base: Path) -> dict[str, torch.Tensor]:
    from diffusers import CosmosTransformer3DModel

    return CosmosTransformer3DModel.from_pretrained(base, subfolder="transformer").state_dict()


@pytest.fixture(scope="module")
def checkpoints(weights, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("native")
    torch.save(native_state(weights, ema=True), root / "model.pt")
    torch.save(native_state(weights, ema=False), root / "model_ema_fp32.pt")
    return {
        "model.pt": root / "model.pt",
        "model_ema_fp32.pt": root / "model_ema_fp32.pt",
        "dcp": save_dcp(native_state(weights, ema=True), root / "iter_000000100"),
    }


def load_pipe(base: Path, **components):
    from diffusers import Cosmos2_5_PredictBasePipeline

    return Cosmos2_5_PredictBasePipeline.from_pretrained(
        base, dtype=torch.float32, safety_checker=PassThroughSafetyChecker(), **components
    )


def transformer_output(transformer, seed: int = 0) -> torch.Tensor:
    """One forward on fixed random inputs of the transformer's own sizes."""
    config = transformer.config
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, config.in_channels - 1, 3, 8, 8, generator=generator)
    text = torch.randn(1, 7, config.crossattn_proj_in_channels, generator=generator)
    with torch.no_grad():
        return transformer(
            hidden_states=hidden,
            timestep=torch.tensor([0.7]),
            encoder_hidden_states=text,
            condition_mask=torch.zeros(1, 1, 3, 8, 8),
            padding_mask=torch.zeros(1, 1, 16, 16),
            return_dict=False,
        )[0]


# ----------------------------------------------------------------------------- transformer


@pytest.mark.parametrize("name", ["model.pt", "model_ema_fp32.pt", "dcp"])
def test_native_checkpoint_gives_the_embedded_transformer(name, checkpoints, base, weights):
    transformer = native.native_transformer(checkpoints[name], str(base), dtype=torch.float32)
    converted = transformer.state_dict()
    assert converted.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(converted[key], value), key  # model.pt: the EMA weights, not the training ones


def test_native_pipeline_generates_what_the_embedded_one_does(checkpoints, base):
    request = tiny_request()
    transformer = native.native_transformer(checkpoints["dcp"], str(base), dtype=torch.float32)
    ours = generate(load_pipe(base, transformer=transformer), request)
    embedded = generate(load_pipe(base), request)
    np.testing.assert_array_equal(ours.frames, embedded.frames)
    assert torch.equal(ours.latents, embedded.latents)


def test_second_load_is_a_plain_from_pretrained(checkpoints, base, monkeypatch, tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(checkpoints["model.pt"].read_bytes())
    first = native.converted_transformer_dir(path, str(base))
    assert (first / "config.json").is_file() and list(first.glob("*.safetensors"))

    def fail(*args):
        raise AssertionError("read the checkpoint again")

    monkeypatch.setattr(native, "_hash_files", fail)
    monkeypatch.setattr(native, "_convert_transformer", fail)
    assert native.converted_transformer_dir(path, str(base)) == first  # no hash, no conversion
    monkeypatch.undo()
    os.utime(path, ns=(1, 1))  # touched: hashed again, but the same content needs no new conversion
    monkeypatch.setattr(native, "_convert_transformer", fail)
    assert native.converted_transformer_dir(path, str(base)) == first


def test_size_and_default_base_come_from_shapes(checkpoints, weights, tmp_path):
    size = native.checkpoint_size(checkpoints["dcp"])
    layers = {int(k.split(".")[1]) for k in weights if k.startswith("transformer_blocks.")}
    assert size == native.NativeSize(
        len(layers),
        weights["patch_embed.proj.weight"].shape[0],
        weights["transformer_blocks.0.attn1.norm_q.weight"].shape[0],
    )
    with pytest.raises(native.NativeCheckpointError, match="no default base model.*--base_model_id"):
        native.base_model_for(checkpoints["model.pt"])
    # A 2B-shaped checkpoint, as shapes only (meta tensors hold no data).
    two_b = {"net.x_embedder.proj.1.weight": torch.empty(2048, 68, device="meta")}
    two_b |= {f"net.blocks.{i}.self_attn.q_norm.weight": torch.empty(128, device="meta") for i in range(28)}
    torch.save(two_b, tmp_path / "model_ema_bf16.pt")
    assert native.base_model_for(tmp_path / "model_ema_bf16.pt") == "nvidia/Cosmos-Predict2.5-2B"


def test_unusable_checkpoints_are_refused_with_the_reason(checkpoints, weights, base, tmp_path):
    def refused(state: dict | None, match: str, raw: bytes | None = None) -> None:
        path = tmp_path / f"case{len(list(tmp_path.iterdir()))}.pt"
        if raw is None:
            torch.save(state, path)
        else:
            path.write_bytes(raw)
        with pytest.raises(native.NativeCheckpointError, match=match):
            native.converted_transformer_dir(path, str(base))

    good = native_state(weights, ema=False)
    refused(None, "could not read .* weights_only=True", raw=checkpoints["model.pt"].read_bytes()[:5000])
    refused({"encoder.weight": torch.zeros(2)}, "not a native Cosmos-Predict2.5 checkpoint.*encoder.weight")
    refused({k: v for k, v in good.items() if "final_layer.linear" not in k}, r"missing 1 keys \(proj_out")
    refused(good | {"net.blocks.0.extra.weight": torch.zeros(2)}, "unexpected 1 keys")
    last = len({k.split(".")[2] for k in good if k.startswith("net.blocks.")}) - 1
    smaller = {k: v for k, v in good.items() if not k.startswith(f"net.blocks.{last}.")}
    refused(smaller, f"has {last} layers.*transformer has {last + 1} layers.*--base_model_id")
    wider = good | {"net.final_layer.linear.weight": torch.zeros(3, 3)}
    refused(wider, "other shapes than the base model's config")
    with pytest.raises(native.NativeCheckpointError, match="not a native Cosmos checkpoint"):
        native.NativeCheckpoint(tmp_path)  # a folder with no DCP metadata


# ----------------------------------------------------------------------------- LoRA


@pytest.fixture(scope="module")
def lora(base, tmp_path_factory) -> dict[str, Path]:
    """One random LoRA (alpha != rank), saved as a diffusers adapter and as a native LoRA run's model.pt."""
    from diffusers import Cosmos2_5_PredictBasePipeline, CosmosTransformer3DModel
    from peft import LoraConfig, get_peft_model_state_dict

    root = tmp_path_factory.mktemp("lora")
    transformer = CosmosTransformer3DModel.from_pretrained(base, subfolder="transformer")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False)
    transformer.add_adapter(config)  # random, non-zero B: the adapter changes the output
    Cosmos2_5_PredictBasePipeline.save_lora_weights(
        root / "diffusers",
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=config.to_dict(),
    )
    # NVIDIA's trainer wraps the net with peft's get_peft_model: base_model.model.<key>, base_layer, .default.
    state = {"net.base_model.model." + to_native(k): v for k, v in transformer.state_dict().items()}
    torch.save(state | {"net.accum_iteration": torch.tensor(7)}, root / "model.pt")
    return {"diffusers": root / "diffusers", "native": root / "model.pt"}


def test_native_lora_matches_the_diffusers_adapter(lora, base):
    from diffusers import CosmosTransformer3DModel

    def output(adapter: Path) -> torch.Tensor:
        transformer = CosmosTransformer3DModel.from_pretrained(base, subfolder="transformer")
        pipe = load_pipe(base, transformer=transformer)
        pipe.load_lora_weights(adapter, adapter_name="variant")
        return transformer_output(pipe.transformer)

    plain = transformer_output(CosmosTransformer3DModel.from_pretrained(base, subfolder="transformer"))
    expected = output(lora["diffusers"])
    assert not torch.allclose(expected, plain)
    assert torch.equal(output(native.converted_lora_dir(lora["native"], alpha=8)), expected)
    # Without its alpha the adapter is scaled by 1 instead of 2: a different variant.
    assert not torch.allclose(output(native.converted_lora_dir(lora["native"])), expected)


def test_lora_and_full_checkpoints_are_not_mixed_up(lora, checkpoints, base):
    with pytest.raises(native.NativeCheckpointError, match="LoRA run's checkpoint.*--lora_path"):
        native.converted_transformer_dir(lora["native"], str(base))
    with pytest.raises(native.NativeCheckpointError, match="no lora_A/lora_B weights.*--model_id"):
        native.converted_lora_dir(checkpoints["model.pt"])


# ----------------------------------------------------------------------------- distilled sampler


def test_distilled_sampler_follows_the_update_rule_step_by_step():
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    weight = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    calls: list[tuple[torch.Tensor, float]] = []

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        calls.append((x.clone(), sigma))
        return torch.tanh(x @ weight) + sigma

    result = distilled.sample_distilled(velocity, noise)

    # The rule written out plainly: x0 = x - s v; x <- (1 - s_next) x0 + s_next eps0, the same eps0.
    sigmas = [1.0, 0.9375, 5 / 6, 0.625]
    assert [sigma for _, sigma in calls] == pytest.approx(sigmas)
    x = noise
    for step, sigma in enumerate(sigmas):
        assert torch.allclose(calls[step][0], x, rtol=0, atol=1e-12), step
        x0 = x - sigma * (torch.tanh(x @ weight) + sigma)
        if step < 3:
            x = (1 - sigmas[step + 1]) * x0 + sigmas[step + 1] * noise
    assert torch.allclose(result, x0, rtol=0, atol=1e-12)


def test_distilled_text2world_on_the_embedded_pipeline(base):
    request = tiny_request(height=64, width=48, num_frames=5, revision="distilled", seed=3)
    pipe = load_pipe(base)
    timesteps = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: timesteps.append(kwargs["timestep"].unique().tolist()), with_kwargs=True
    )
    result = generate(pipe, request)
    hook.remove()
    frames, latents, timings = result.frames, result.latents, result.timings
    assert frames.shape == (request.num_frames, request.height, request.width, 3) and frames.dtype == np.uint8
    assert timesteps == [[pytest.approx(s)] for s in distilled.DISTILLED_SIGMAS]  # σ itself, one forward each
    assert timings.forwards == 4 and len(timings.steps_s) == 4

    # The same sample from the pipeline's public parts: its noise draw, its encoder, its transformer.
    embeds, _ = pipe.encode_prompt(
        request.prompt, do_classifier_free_guidance=False, device=torch.device("cpu")
    )
    latent_frames = (request.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
    scale = pipe.vae_scale_factor_spatial
    shape = (1, 16, latent_frames, request.height // scale, request.width // scale)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(3))

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        with torch.no_grad():
            return pipe.transformer(
                hidden_states=x,
                timestep=torch.full((1, 1, latent_frames, 1, 1), sigma),
                encoder_hidden_states=embeds,
                condition_mask=torch.zeros(1, 1, *shape[2:]),
                padding_mask=torch.zeros(1, 1, request.height, request.width),
                return_dict=False,
            )[0]

    assert torch.equal(latents, distilled.sample_distilled(velocity, noise))


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("form", ["model.pt", "dcp"])
def test_a_native_checkpoint_is_a_model_id_on_the_command_line(
    checkpoints, form, tmp_path, tracked, monkeypatch
) -> None:
    """`--model_id <.pt | DCP folder> --base_model_id embedded:tiny` through the whole command: the same
    video as the embedded post-trained model it was built from; `--revision distilled` samples in 4 steps."""
    from cosmos_pipeline.media import read_video
    from cosmos_pipeline.sidecar import read_sidecar
    from flows import cli
    from tests.conftest import TINY_ARGS

    monkeypatch.setenv("COSMOS_TRACKING_URI", tracked["tracking_uri"])
    monkeypatch.setenv("COSMOS_ARTIFACT_ROOT", tracked["artifact_root"])
    args = [
        *TINY_ARGS,
        "--prompt",
        "a red ball rolls to the left",
        "--num_output_frames",
        "5",
        "--seed",
        "4",
    ]
    outputs = {name: tmp_path / f"{name}.mp4" for name in ("embedded", "native", "distilled")}
    assert cli.run([*args, "--output_path", str(outputs["embedded"])]) == 0
    native_args = [*args, "--model_id", str(checkpoints[form]), "--base_model_id", "embedded:tiny"]
    assert cli.run([*native_args, "--output_path", str(outputs["native"])]) == 0
    assert cli.run([*native_args, "--revision", "distilled", "--output_path", str(outputs["distilled"])]) == 0
    np.testing.assert_array_equal(read_video(outputs["native"]), read_video(outputs["embedded"]))
    assert read_sidecar(outputs["distilled"])["forwards"] == 4
    assert not np.array_equal(read_video(outputs["distilled"]), read_video(outputs["embedded"]))
