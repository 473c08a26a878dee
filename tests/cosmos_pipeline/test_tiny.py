"""The embedded model: built offline, saved, and loaded back through the real from_pretrained path."""

import json

import pytest
import torch
from diffusers import Cosmos2_5_PredictBasePipeline

from cosmos_pipeline import tiny
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.guardrail import PassThroughSafetyChecker


def test_save_load_round_trip_keeps_every_weight(tmp_path):
    path = tiny.embedded_model_path(tiny.PRE_TRAINED)
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "Cosmos2_5_PredictBasePipeline" and "safety_checker" not in index
    loaded = Cosmos2_5_PredictBasePipeline.from_pretrained(path, safety_checker=PassThroughSafetyChecker())
    fresh = tiny.build_transformer(tiny.REVISION_SEEDS[tiny.PRE_TRAINED]).state_dict()
    for name, tensor in loaded.transformer.state_dict().items():
        assert torch.equal(tensor, fresh[name]), name
    assert loaded.tokenizer.chat_template == tiny.CHAT_TEMPLATE


def test_build_is_deterministic_and_revisions_differ():
    pre = tiny.build_transformer(tiny.REVISION_SEEDS[tiny.PRE_TRAINED]).state_dict()
    again = tiny.build_transformer(tiny.REVISION_SEEDS[tiny.PRE_TRAINED]).state_dict()
    post = tiny.build_transformer(tiny.REVISION_SEEDS[tiny.POST_TRAINED]).state_dict()
    assert all(torch.equal(pre[name], again[name]) for name in pre)
    assert any(not torch.equal(pre[name], post[name]) for name in pre)
    assert tiny.embedded_model_path(tiny.PRE_TRAINED) != tiny.embedded_model_path(tiny.POST_TRAINED)


def test_tokenizer_knows_the_chat_template_tokens():
    tokenizer = tiny.build_tokenizer()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "a robot"}]}],
        tokenize=True,
        add_generation_prompt=False,
        max_length=16,
        truncation=True,
        padding="max_length",
    )
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") and len(ids) == 16


def test_unknown_revision_is_an_input_error():
    with pytest.raises(InputError, match="no revision 'main'.*pre-trained"):
        tiny.embedded_model_path("main")


def test_built_model_is_reused_from_the_cache():
    path = tiny.embedded_model_path(tiny.POST_TRAINED)
    stamp = (path / "model_index.json").stat().st_mtime_ns
    assert tiny.embedded_model_path(tiny.POST_TRAINED) == path
    assert (path / "model_index.json").stat().st_mtime_ns == stamp
