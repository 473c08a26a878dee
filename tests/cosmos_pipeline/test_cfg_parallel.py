"""CFG-parallel: the unconditional forward of each guided step on a replica (a second GPU in
production; a second CPU thread here), with the same result as one device."""

import numpy as np
import pytest

from cosmos_pipeline import loading
from cosmos_pipeline.cfg_parallel import CFG_PARALLEL_ATTRIBUTE, cfg_parallel_device
from cosmos_pipeline.generate import generate
from cosmos_pipeline.loading import PipelineCache, PipelineKey

from .conftest import tiny_request


def test_replica_gives_the_one_device_result():
    serial = tiny_request(cfg_parallel="off")
    parallel = tiny_request(cfg_parallel="cpu")  # an explicit device: the replica runs in a thread
    assert PipelineKey.for_request(serial).cfg_parallel is None
    assert PipelineKey.for_request(parallel).cfg_parallel == "cpu"
    cache = PipelineCache(capacity=2)
    pipe = cache.get(PipelineKey.for_request(parallel))
    assert pipe.__dict__[CFG_PARALLEL_ATTRIBUTE].replica is not pipe.transformer
    np.testing.assert_array_equal(
        generate(cache.get(PipelineKey.for_request(serial)), serial).frames, generate(pipe, parallel).frames
    )


@pytest.mark.parametrize(
    ("setting", "device_map", "gpus", "main", "expected"),
    [
        ("auto", None, 2, "cuda", "cuda:1"),
        ("auto", None, 2, "cuda:1", "cuda:0"),
        ("auto", None, 1, "cuda", None),  # one GPU: nothing to split over
        ("auto", None, 0, "cpu", None),
        ("auto", "balanced", 2, "cuda", None),  # sharded components: no replica
        ("off", None, 2, "cuda", None),
        ("cuda:3", None, 4, "cuda", "cuda:3"),
    ],
)
def test_replica_device_selection(monkeypatch, setting, device_map, gpus, main, expected):
    monkeypatch.setattr(loading.torch.cuda, "device_count", lambda: gpus)
    assert cfg_parallel_device(setting, device_map, main) == expected
