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

`cosmos_pipeline.generate.generate` runs it in place of the pipeline's loop for `--revision distilled`;
`cosmos_pipeline.loading` takes the checkpoint from `distilled_checkpoint()` (or a local `.pt`).
"""

from collections.abc import Callable, Sequence

import torch

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
