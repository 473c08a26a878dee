"""The distilled Cosmos-Predict2.5 2B: its 4-step sampler, one transformer forward per step, no CFG.

NVIDIA's distilled 2B is a DMD2 student of the pre-trained 2B with the teacher's guidance (3) distilled in,
released as a native `.pt` only. Its sampler is not the pipeline's UniPC loop. From NVIDIA's
cosmos-predict2.5 (`cosmos_predict2/_src/predict2/distill/models/video2world_model_distill_dmd2.py`,
`generate_samples_from_batch`, and `distillation_base_mixin.py`, `denoise_edm`): the student samples at the
TrigFlow times [π/2, atan 15, atan 5, atan 5/3] (`experiments_dmd2.py`: a uniform 4-step schedule
[1, 0.75, 0.5, 0.25] shifted by 5). With σ_data = 1 its rectified-flow scaling
(`RectifiedFlow_sCMWrapper`) makes each step, in the flow terms the diffusers transformer uses:

- σ = tan t / (1 + tan t) = [1, 15/16, 5/6, 5/8], and the transformer's timestep is σ itself (c_noise);
- the transformer sees x = (1 − σ)·x0 + σ·ε₀ (c_in) and predicts the velocity v; x0 = x − σ·v;
- the next state re-noises x0 with the **initial** noise ε₀, not fresh noise; the sample is the last x0.
"""

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from cosmos_pipeline.acceleration.memory import text_encoder_on_device
from cosmos_pipeline.generate import Timings

DISTILLED_SIGMAS: tuple[float, ...] = (1.0, 15 / 16, 5 / 6, 5 / 8)
# Where NVIDIA's cosmos-oss registry (checkpoints_predict2.py, "nvidia/Cosmos-Predict2.5-2B/base/distilled")
# finds the checkpoint; its base components are the pre-trained 2B's (the student started from that teacher).
DISTILLED_REPOSITORY = "nvidia/Cosmos-Predict2.5-2B"
DISTILLED_FILENAME = "base/distilled/575edf0f-d973-4c74-b52c-69929a08d0a5_ema_bf16.pt"
DISTILLED_COMMIT = "e26f8a125a2235c5a00245a65207402dd0cdcb89"
DISTILLED_BASE_REVISION = "diffusers/base/pre-trained"

Velocity = Callable[[torch.Tensor, float], torch.Tensor]  # (state x at σ, σ) -> predicted velocity


def sample_distilled(
    velocity: Velocity, noise: torch.Tensor, sigmas: Sequence[float] = DISTILLED_SIGMAS
) -> torch.Tensor:
    """The few-step sample from `noise` (ε₀): len(sigmas) calls of `velocity`, the last x0 returned."""
    x = noise
    for i, sigma in enumerate(sigmas):
        x0 = x - sigma * velocity(x, sigma)
        if i + 1 < len(sigmas):
            x = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * noise
    return x0


def distilled_checkpoint() -> str:
    """The distilled 2B's `.pt`, fetched from the hub once (then from its cache)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(DISTILLED_REPOSITORY, DISTILLED_FILENAME, revision=DISTILLED_COMMIT)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate_distilled(
    pipe,
    prompt: str,
    height: int = 704,
    width: int = 1280,
    num_frames: int = 93,
    seed: int = 0,
    sigmas: Sequence[float] = DISTILLED_SIGMAS,
) -> tuple[np.ndarray, torch.Tensor, Timings]:
    """Text2World with the distilled sampler on a loaded pipeline: frames (T, H, W, 3) uint8, the final
    latents and the timings. Each stage is `cosmos_pipeline.generate.generate`'s, with guidance off;
    the guardrail is the caller's (generate() runs it around every sampler)."""
    timings = Timings()
    device = pipe._execution_device
    _sync(device)
    start = time.perf_counter()

    # 1. Prompt encoding (one prompt: no negative prompt without guidance)
    with text_encoder_on_device(pipe):
        prompt_embeds, _ = pipe.encode_prompt(
            prompt=prompt, negative_prompt=None, do_classifier_free_guidance=False, device=device
        )
    _sync(device)
    timings.prompt_encoding_s = time.perf_counter() - start

    # 2. Initial noise, drawn as generate() draws it (CPU generator, float32)
    stage = time.perf_counter()
    transformer_dtype = pipe.transformer.dtype
    noise, _, cond_mask, cond_indicator = pipe.prepare_latents(
        video=None,
        batch_size=1,
        num_channels_latents=pipe.transformer.config.in_channels - 1,
        height=height,
        width=width,
        num_frames_in=0,
        num_frames_out=num_frames,
        do_classifier_free_guidance=False,
        dtype=torch.float32,
        device=device,
        generator=torch.Generator().manual_seed(seed),
    )
    cond_mask = cond_mask.to(transformer_dtype)
    padding_mask = noise.new_zeros(1, 1, height, width, dtype=transformer_dtype)
    timings.conditioning_s = time.perf_counter() - stage

    # 3. Few-step sampling: the transformer called exactly as in generate()'s loop
    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        step_start = time.perf_counter()
        sigma_t = torch.tensor([sigma], device=device, dtype=torch.float32).view(1, 1, 1, 1, 1)
        prediction = pipe.transformer(
            hidden_states=x.to(transformer_dtype),
            condition_mask=cond_mask,
            timestep=cond_indicator * 0.0001 + (1 - cond_indicator) * sigma_t,
            encoder_hidden_states=prompt_embeds,
            padding_mask=padding_mask,
            return_dict=False,
        )[0]
        _sync(device)
        timings.steps_s.append(time.perf_counter() - step_start)
        return prediction.float()

    latents = sample_distilled(velocity, noise, sigmas)
    timings.forwards = len(sigmas)

    # 4. VAE decode, as generate() does it
    stage = time.perf_counter()
    mean, std = pipe.latents_mean.to(device, latents.dtype), pipe.latents_std.to(device, latents.dtype)
    decoded = latents / std + mean
    decoded = pipe.vae.decode(decoded.to(pipe.vae.dtype), return_dict=False)[0]
    decoded = pipe._match_num_frames(decoded, num_frames)
    frames = pipe.video_processor.postprocess_video(decoded, output_type="np")[0]
    frames = (frames * 255).astype(np.uint8)
    _sync(device)
    timings.decode_s = time.perf_counter() - stage
    timings.total_s = time.perf_counter() - start
    return frames, latents, timings
