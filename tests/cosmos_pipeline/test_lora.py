"""Custom weights as variants: a LoRA adapter on the embedded model, and a local checkpoint folder."""

import numpy as np

from cosmos_pipeline import tiny
from cosmos_pipeline.generate import generate
from cosmos_pipeline.guardrail import PassThroughSafetyChecker
from cosmos_pipeline.loading import PipelineCache, PipelineKey

from .conftest import tiny_request


def test_lora_variant_differs_from_its_base_and_scale_zero_matches_it(tiny_lora):
    cache = PipelineCache(capacity=3)
    base = tiny_request()
    lora = tiny_request(lora_path=tiny_lora)
    off = tiny_request(lora_path=tiny_lora, lora_scale=0.0)
    assert len({PipelineKey.for_request(r) for r in (base, lora, off)}) == 3
    frames = {name: generate(cache.get(PipelineKey.for_request(r)), r).frames
              for name, r in {"base": base, "lora": lora, "off": off}.items()}  # fmt: skip
    assert not np.array_equal(frames["base"], frames["lora"])
    np.testing.assert_array_equal(frames["base"], frames["off"])


def test_local_checkpoint_folder_is_a_variant(tmp_path):
    folder = tiny.embedded_model_path(tiny.PRE_TRAINED)
    # A local folder is a real model to us: the guardrail is on unless turned off explicitly.
    assert PipelineKey.for_request(tiny_request(model_id=str(folder))).guardrail is True
    request = tiny_request(model_id=str(folder), guardrail="off")
    pipe = PipelineCache().get(PipelineKey.for_request(request))
    assert isinstance(pipe.safety_checker, PassThroughSafetyChecker)
    embedded = tiny_request(revision=tiny.PRE_TRAINED)
    np.testing.assert_array_equal(
        generate(pipe, request).frames,
        generate(PipelineCache().get(PipelineKey.for_request(embedded)), embedded).frames,
    )
