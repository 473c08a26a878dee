"""Loading `Cosmos2_5_PredictBasePipeline`, and a cache so each variant loads once per process.

The embedded model goes through the very same `from_pretrained` call as the hub checkpoints; only
the path differs (a local folder built by `cosmos_pipeline.tiny`).
"""

import functools
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from cosmos_pipeline import cfg_parallel, native, tiny
from cosmos_pipeline.acceleration.apply import apply_acceleration
from cosmos_pipeline.cfg_parallel import cfg_parallel_device
from cosmos_pipeline.distilled import DISTILLED_BASE_REVISION, distilled_checkpoint
from cosmos_pipeline.guardrail import load_safety_checker
from cosmos_pipeline.request import DEFAULT_REVISION, DISTILLED_REVISION, GenerationRequest

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class PipelineKey:
    """What makes two loaded pipelines different: variant, precision, placement, guardrail."""

    model_id: str
    revision: str
    dtype: str
    device: str
    device_map: str | None
    guardrail: bool
    lora_path: str | None = None
    lora_scale: float = 1.0
    cfg_parallel: str | None = None  # the replica's device for CFG-parallel steps, if any
    base_model_id: str | None = None  # a native checkpoint's other components
    lora_alpha: float | None = None  # a native LoRA's alpha

    @classmethod
    def for_request(cls, request: GenerationRequest) -> "PipelineKey":
        request = resolve_execution(request)
        return cls(
            model_id=request.model_id,
            revision=request.revision,
            dtype=request.dtype,
            device=request.device,
            device_map=request.device_map,
            guardrail=request.guardrail_enabled,
            lora_path=None if request.lora_path is None else str(request.lora_path.resolve()),
            lora_scale=request.lora_scale,
            cfg_parallel=cfg_parallel_device(request.cfg_parallel, request.device_map, request.device),
            base_model_id=request.base_model_id,
            lora_alpha=request.lora_alpha,
        )


def resolve_device(device: str) -> str:
    """`cuda` falls back to the CPU where there is no GPU, so the defaults work everywhere."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        _warn_no_gpu()
        return "cpu"
    return device


@functools.cache
def _warn_no_gpu() -> None:  # once a process, not once a call
    logger.warning("no CUDA device is available; running on the CPU")


def resolve_execution(request: GenerationRequest) -> GenerationRequest:
    """`request` with the device that will run it and a concrete dtype (`auto`: bfloat16 on a GPU, float32
    on a CPU, where bfloat16 has no fast kernels), as every record of the run reports them."""
    device = resolve_device(request.device)
    dtype = request.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    if (device, dtype) == (request.device, request.dtype):
        return request
    return request.model_copy(update={"device": device, "dtype": dtype})


def model_location(model_id: str, revision: str) -> tuple[str, str | None]:
    """Where `from_pretrained` reads from, and the hub revision to pass (None for local folders)."""
    if tiny.is_embedded(model_id):
        return str(tiny.embedded_model_path(revision)), None
    if Path(model_id).expanduser().is_dir():
        return str(Path(model_id).expanduser()), None
    return model_id, revision


def native_source(key: "PipelineKey") -> tuple[str, str, str | None] | None:
    """For a native checkpoint (a `.pt`, a DCP folder, or `--revision distilled` of the hub model): the
    checkpoint, and the base model and revision its other components come from. None otherwise."""
    checkpoint = None
    if native.is_native_checkpoint(key.model_id):
        checkpoint = key.model_id
    elif key.revision == DISTILLED_REVISION and not tiny.is_embedded(key.model_id):
        checkpoint = distilled_checkpoint()  # NVIDIA's .pt in the model's hub repository
    if checkpoint is None:
        return None
    base = key.base_model_id or (
        key.model_id if checkpoint != key.model_id else native.base_model_for(checkpoint)
    )
    # The base's revision: any of its diffusers revisions shares the components; the distilled student
    # started from the pre-trained one.
    revision = (
        DISTILLED_BASE_REVISION if key.revision in (DISTILLED_REVISION, DEFAULT_REVISION) else key.revision
    )
    return (checkpoint, *model_location(base, revision))


def import_pipeline_code() -> None:
    """Import diffusers' Cosmos pipeline (seconds of CPU) now, for callers that can overlap it with other
    waiting, such as the command line while its temporary Prefect server starts."""
    from diffusers import Cosmos2_5_PredictBasePipeline  # noqa: F401


def load_pipeline(key: PipelineKey):
    from diffusers import Cosmos2_5_PredictBasePipeline
    from diffusers.utils import logging as diffusers_logging

    components = {}
    source = native_source(key)
    if source is None:
        location, revision = model_location(key.model_id, key.revision)
    else:
        checkpoint, location, revision = source
        components["transformer"] = native.native_transformer(
            checkpoint, location, revision, DTYPES[key.dtype]
        )
    safety_checker = load_safety_checker(key.guardrail)
    verbosity = diffusers_logging.get_verbosity()
    if (
        not key.guardrail
    ):  # diffusers warns that the pass-through is not a CosmosSafetyChecker: it is on purpose
        diffusers_logging.set_verbosity_error()
    try:
        pipe = Cosmos2_5_PredictBasePipeline.from_pretrained(
            location,
            revision=revision,
            dtype=DTYPES[key.dtype],
            device_map=key.device_map,
            safety_checker=safety_checker,
            **components,
        )
    finally:
        diffusers_logging.set_verbosity(verbosity)
    if key.lora_path is not None:
        adapter = key.lora_path
        if native.is_native_checkpoint(adapter):  # a native LoRA run's checkpoint: converted once, cached
            adapter = str(native.converted_lora_dir(adapter, key.lora_alpha))
        # diffusers' Cosmos LoRA loader; kept unfused so the base weights stay intact.
        pipe.load_lora_weights(adapter, adapter_name="variant")
        pipe.set_adapters(["variant"], adapter_weights=[key.lora_scale])
    if key.cfg_parallel is not None:
        cfg_parallel.attach(pipe, key.cfg_parallel)
    # The default mode (compiled blocks, fastest exact attention, memory plan) from the start; a
    # request's own options re-plan the loaded pipeline in place (`generate(options=...)`).
    if key.device_map is None:
        apply_acceleration(pipe, device=key.device)  # places components as the memory plan says
    else:
        apply_acceleration(pipe)  # levers only: the device map keeps its placement
    return pipe


class PipelineCache:
    """Loaded pipelines by key, least recently used evicted first.

    `capacity` bounds how many variants stay resident: each 2B pipeline holds ~20 GiB of weights.
    `loads` counts loads per key, so callers (and tests) can see that nothing was reloaded.
    """

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity
        self.loads: Counter[PipelineKey] = Counter()
        self.load_seconds: dict[PipelineKey, float] = {}
        self._pipes: OrderedDict[PipelineKey, object] = OrderedDict()

    def get(self, key: PipelineKey):
        if key in self._pipes:
            self._pipes.move_to_end(key)
            return self._pipes[key]
        while len(self._pipes) >= self.capacity:
            self._pipes.popitem(last=False)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        start = time.perf_counter()
        pipe = load_pipeline(key)
        self.load_seconds[key] = time.perf_counter() - start
        self.loads[key] += 1
        self._pipes[key] = pipe
        return pipe

    def clear(self) -> None:
        self._pipes.clear()


PIPELINES = PipelineCache()
