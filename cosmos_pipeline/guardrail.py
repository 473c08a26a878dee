"""The Cosmos guardrail, and the explicit way to run without it.

`Cosmos2_5_PredictBasePipeline(safety_checker=None)` does not disable the guardrail: it builds
`cosmos_guardrail.CosmosSafetyChecker`, which downloads its own models. So the choice is made once
(`GenerationRequest.guardrail_enabled`) and loaded here: the real guardrail when it is on, a pass-through
object when the user turned it off. The effective choice is reported with every result.
"""

import numpy as np
import torch

from cosmos_pipeline.errors import GuardrailUnavailableError


class PassThroughSafetyChecker(torch.nn.Module):
    """Accepts every prompt and video; used only when the user disabled the guardrail."""

    def __init__(self) -> None:
        super().__init__()
        # diffusers reads `.device` and `.dtype` off every module component of a pipeline.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, frames: np.ndarray) -> np.ndarray:
        return frames


def load_safety_checker(enabled: bool) -> torch.nn.Module:
    if not enabled:
        return PassThroughSafetyChecker()
    try:
        from cosmos_guardrail import CosmosSafetyChecker
    except ImportError as error:
        raise GuardrailUnavailableError(
            "the Cosmos guardrail is on but `cosmos_guardrail` is not installed. Install it with "
            "`pip install cosmos_guardrail` (it downloads its models on first use), or run without it "
            "by passing --guardrail off (the choice is recorded with every output)."
        ) from error
    try:
        return CosmosSafetyChecker()
    except Exception as error:  # its model download or initialisation failed
        raise GuardrailUnavailableError(
            f"the Cosmos guardrail could not be loaded ({type(error).__name__}: {error}). Check network "
            "access to its models, or run without it by passing --guardrail off."
        ) from error
