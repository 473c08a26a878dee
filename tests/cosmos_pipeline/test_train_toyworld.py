"""scripts/train_toyworld.py: its objective is the pipeline's, and its smoke setting trains every stage
and exports a model that loads and runs like the real checkpoints."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from diffusers import Cosmos2_5_PredictBasePipeline

from cosmos_pipeline import tiny
from cosmos_pipeline.generate import generate
from cosmos_pipeline.guardrail import PassThroughSafetyChecker
from cosmos_pipeline.loading import PipelineCache, PipelineKey

from .conftest import REPO, tiny_request

spec = importlib.util.spec_from_file_location("train_toyworld", REPO / "scripts" / "train_toyworld.py")
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    """One smoke training for the module: (checkpoint folder, exported model folder)."""
    root = tmp_path_factory.mktemp("toyworld")
    assert train.main(["--smoke", "--checkpoints", str(root / "ckpt"), "--export", str(root / "model")]) == 0
    return root / "ckpt", root / "model"


def test_the_training_target_is_what_the_sampler_integrates():
    """A perfectly trained model predicts E[v | x] = (x - x0) / sigma for a single clip x0; diffusers'
    own call, fed that, must land on x0 for any step count."""
    pipe = Cosmos2_5_PredictBasePipeline.from_pretrained(
        tiny.embedded_model_path(tiny.POST_TRAINED), safety_checker=PassThroughSafetyChecker()
    )
    factor = pipe.vae_scale_factor_spatial
    x0 = torch.randn(1, 16, 3, 64 // factor, 112 // factor, generator=torch.Generator().manual_seed(0))
    noise, sigma = torch.randn_like(x0), torch.tensor(0.3)
    noisy = train.noisy_latents(x0, noise, sigma)
    torch.testing.assert_close((noisy - x0) / sigma, train.velocity_target(x0, noise))
    pipe.transformer.forward = lambda hidden_states, timestep, **_: ((hidden_states - x0) / timestep,)
    for steps in (2, 36):
        latents = pipe(
            prompt="a red ball", height=64, width=112, num_frames=9, num_inference_steps=steps,
            generator=torch.Generator().manual_seed(1), output_type="latent",
        ).frames  # fmt: skip
        torch.testing.assert_close(latents, x0, atol=1e-5, rtol=0)


def test_noise_levels_follow_the_schedule_the_sampler_visits():
    sigmas = train.sample_sigmas(torch.Generator().manual_seed(0), 20000, "cpu")
    scheduler = tiny.build_scheduler()
    scheduler.set_timesteps(36)
    visited = scheduler.sigmas[:-1].numpy()
    assert sigmas.min() >= visited.min() - 1e-3 and sigmas.max() <= visited.max() + 1e-3
    # the same share above the schedule's median step, within sampling error
    assert abs(float((sigmas > float(np.median(visited))).float().mean()) - 0.5) < 0.05


def test_smoke_training_exports_a_model_the_pipeline_loads(smoke):
    checkpoints, model = smoke
    record = json.loads((model / "TRAINING.json").read_text())
    assert set(record["stages"]) == set(train.STAGES) and record["commands"]
    assert all(record["stages"][stage]["done"] for stage in train.STAGES)
    cache = PipelineCache(capacity=3)
    request = tiny_request(model_id=str(model / "post-trained"), guardrail="off")
    pipe = cache.get(PipelineKey.for_request(request))
    assert pipe.vae_scale_factor_spatial == 16 and pipe.transformer.config.patch_size == [1, 2, 1]
    result = generate(pipe, request)
    reference = pipe(
        prompt=request.prompt,
        height=request.height,
        width=request.width,
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        generator=torch.Generator().manual_seed(request.seed),
        output_type="np",
    ).frames[0]
    np.testing.assert_array_equal(result.frames, (reference * 255).astype(np.uint8))
    off = tiny_request(
        model_id=str(model / "post-trained"), guardrail="off", lora_path=model / "lora-pink", lora_scale=0.0
    )
    np.testing.assert_array_equal(
        generate(cache.get(PipelineKey.for_request(off)), off).frames, result.frames
    )


def test_a_stage_stopped_at_the_deadline_goes_on_where_it_stopped(tmp_path, smoke):
    checkpoints, _ = smoke
    text = checkpoints / "text"
    state = {"stages": {"text": {"done": True}}, "commands": []}
    (tmp_path / "text").symlink_to(text)
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert train.main(["--smoke", "--checkpoints", str(tmp_path), "--until", "vae", "--deadline", "0"]) == 3
    stopped = json.loads((tmp_path / "state.json").read_text())["stages"]["vae"]
    assert stopped["steps"] == 0 and not stopped.get("done")
    assert train.main(["--smoke", "--checkpoints", str(tmp_path), "--until", "vae"]) == 0
    finished = json.loads((tmp_path / "state.json").read_text())["stages"]["vae"]
    assert finished["steps"] == train.SMOKE.vae.max_steps and finished["done"]
