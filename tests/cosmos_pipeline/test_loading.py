import sys

import pytest

from cosmos_pipeline import loading
from cosmos_pipeline.errors import GuardrailUnavailableError
from cosmos_pipeline.guardrail import PassThroughSafetyChecker, load_safety_checker
from cosmos_pipeline.loading import PipelineCache, PipelineKey, model_location
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.runner import generate_request, write_outputs

from .conftest import tiny_request


def test_second_request_in_one_process_reuses_the_loaded_pipeline(tmp_path):
    cache = PipelineCache()
    first = tiny_request(output_path=tmp_path / "a.mp4")
    second = tiny_request(output_path=tmp_path / "b.mp4", seed=9, prompt="another prompt")
    for request in (first, second):
        path, sidecar = write_outputs(generate_request(cache.get(PipelineKey.for_request(request)), request))
        assert path.is_file() and sidecar.is_file()
    assert cache.loads == {PipelineKey.for_request(first): 1}


def test_cache_evicts_least_recently_used_variant():
    cache = PipelineCache(capacity=1)
    pre = PipelineKey.for_request(tiny_request(revision="diffusers/base/pre-trained"))
    post = PipelineKey.for_request(tiny_request(revision="diffusers/base/post-trained"))
    cache.get(pre), cache.get(post), cache.get(pre)
    assert cache.loads[pre] == 2 and cache.loads[post] == 1


def test_model_location_local_folder_hub_and_embedded(tmp_path):
    assert model_location("nvidia/Cosmos-Predict2.5-14B", "diffusers/base/pre-trained") == (
        "nvidia/Cosmos-Predict2.5-14B",
        "diffusers/base/pre-trained",
    )
    assert model_location(str(tmp_path), "ignored") == (str(tmp_path), None)
    path, revision = model_location("embedded:tiny", "diffusers/base/pre-trained")
    assert revision is None and path.endswith(tuple("0123456789abcdef"))


def test_cuda_falls_back_to_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(loading.torch.cuda, "is_available", lambda: False)
    assert loading.resolve_device("cuda") == "cpu"
    assert loading.resolve_device("cpu") == "cpu"


def test_guardrail_choice():
    def enabled(mode: str, model_id: str) -> bool:
        return GenerationRequest(prompt="p", guardrail=mode, model_id=model_id).guardrail_enabled

    assert enabled("auto", "embedded:tiny") is False
    assert enabled("auto", "nvidia/Cosmos-Predict2.5-2B") is True
    assert enabled("on", "embedded:tiny") is True
    assert enabled("off", "nvidia/Cosmos-Predict2.5-2B") is False
    assert isinstance(load_safety_checker(False), PassThroughSafetyChecker)


def test_guardrail_unavailable_says_how_to_install_or_disable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cosmos_guardrail", None)  # as if not installed: import fails
    with pytest.raises(GuardrailUnavailableError, match="pip install cosmos_guardrail.*--guardrail off"):
        load_safety_checker(True)
