"""Helpers for the core's tests: a tiny request, and the command line's batch check. (The embedded model's
cache is the root conftest's.)"""

from pathlib import Path

from cosmos_pipeline.batch import BatchValidationError, check_batch
from cosmos_pipeline.bundle import LOCAL_POLICY, request_rows
from cosmos_pipeline.policy import Policy
from cosmos_pipeline.request import GenerationRequest

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "assets"
# Small enough for a 2-core CPU, large enough to exercise 8x VAE downsampling and 2x2 patches.
TINY = {"model_id": "embedded:tiny", "height": 64, "width": 112, "num_inference_steps": 2, "device": "cpu"}


def tiny_request(**overrides) -> GenerationRequest:
    return GenerationRequest(
        **{"prompt": "a robot arm stacks boxes", "num_frames": 9, "seed": 3, **TINY, **overrides}
    )


def checked(
    flags: dict, policy: Policy = LOCAL_POLICY, skip_existing: bool = False
) -> list[GenerationRequest]:
    """What the command line runs for `flags`: the valid batch's requests, or the error it prints."""
    report = check_batch(request_rows(flags, policy=policy), policy, skip_existing)
    if not report.ok:
        raise BatchValidationError(report)
    return report.requests
