"""The GPU step: one request on its variant's pipeline, one generation at a time per GPU.

The pipeline comes from the process-wide cache (`cosmos_pipeline.loading.PIPELINES`), so a
variant loads once per process however many requests use it. A Prefect global concurrency limit
per host and GPU (`gpu-<host>-<id>`, or `cpu-<host>`) keeps two flow runs, from any worker on
the host, off the same device. Retries happen only for errors that can pass on their own.
"""

import contextlib
import gc
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.sync import concurrency

from cosmos_pipeline.acceleration.options import Acceleration
from cosmos_pipeline.errors import GuardrailUnavailableError, InputError
from cosmos_pipeline.generate import GenerationResult, UnsafeContentError
from cosmos_pipeline.loading import PIPELINES, PipelineKey, resolve_device
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.runner import generate_request
from cosmos_pipeline.settings import Settings

# Never retried: the same input fails the same way. OOM included: with one generation per GPU
# (the concurrency limit) nothing else frees memory, so a retry burns GPU time and fails again;
# the fix is a smaller size, fewer frames or an offload plan. Missing or forbidden files likewise.
PERMANENT = (
    InputError,
    UnsafeContentError,
    GuardrailUnavailableError,
    torch.OutOfMemoryError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
# The holder renews its slot's lease; one that dies (a killed worker) frees the GPU when the lease runs out:
# within about a minute, not Prefect's default five.
SLOT_LEASE_S = 60.0
# Retried: the network (hub downloads, the Prefect/MLflow APIs), timeouts, I/O hiccups.
TRANSIENT = (ConnectionError, TimeoutError, OSError)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, PERMANENT):
        return False
    with contextlib.suppress(ImportError):  # a missing repo or revision will still be missing
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        if isinstance(error, RepositoryNotFoundError | RevisionNotFoundError | EntryNotFoundError):
            return False
    return isinstance(error, TRANSIENT)


def retry_on_transient(task, task_run: TaskRun, state: State) -> bool:
    """Prefect's `retry_condition_fn`: retry the failed run only if its error is transient."""
    try:
        state.result()
    except Exception as error:
        return is_transient(error)
    return False


def concurrency_limit_names(device: str, device_map: str | None) -> list[str]:
    """The limits a generation on `device` occupies: each physical GPU it uses, or the host's CPU.

    GPUs are named by their physical id (through CUDA_VISIBLE_DEVICES), so two workers that each see
    "cuda:0" on different cards do not block each other, and two that share a card do.
    """
    host = socket.gethostname()
    if not device.startswith("cuda"):
        return [f"cpu-{host}"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = (
        [part.strip() for part in visible.split(",") if part.strip()]
        if visible
        else [str(index) for index in range(torch.cuda.device_count())]
    )
    if device_map is not None:  # sharded over every visible GPU
        used = ids
    else:
        index = torch.device(device).index or 0
        used = [ids[index] if index < len(ids) else str(index)]
    return [f"gpu-{host}-{gpu}" for gpu in used]


@contextlib.contextmanager
def device_slot(names: list[str], settings: Settings) -> Iterator[None]:
    """Hold one slot of each limit in `names`, creating the limits on first use.

    Works against any Prefect API, the temporary local server included. If the limits cannot be
    created (an API that refuses), the generation runs without them and says so.
    """
    from prefect.client.orchestration import get_client

    logger = get_run_logger()
    try:
        with get_client(sync_client=True) as client:
            for name in names:
                client.upsert_global_concurrency_limit_by_name(name, settings.gpu_slots)
    except Exception as error:
        logger.warning("running without a device slot: cannot create limits %s (%s)", names, error)
        yield
        return
    logger.info("waiting for a slot on %s", ", ".join(names))
    with concurrency(
        names, occupy=1, timeout_seconds=settings.gpu_wait_timeout_s, strict=True, lease_duration=SLOT_LEASE_S
    ):
        yield


@dataclass
class Generation:
    """A generation's result and how it ran: the pipeline's placement and whether it was loaded now."""

    result: GenerationResult
    pipeline: dict[str, str]
    load_s: float | None  # seconds to load the pipeline, None when it came from the cache
    limits: list[str]


def describe_pipeline(pipe) -> dict[str, str]:
    """Where the pipeline's components live and how they run (recorded with every run)."""
    described = {"execution_device": str(pipe._execution_device)}
    for name in ("transformer", "vae", "text_encoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            parameter = next(module.parameters(), None)
            if parameter is not None:
                described[f"{name}_placement"] = f"{parameter.device} {parameter.dtype}".replace("torch.", "")
    device_map = getattr(pipe, "hf_device_map", None)
    described["hf_device_map"] = str(device_map) if device_map else "none"
    return described


def out_of_memory_message(request: GenerationRequest, device: str, detail: str) -> str:
    """What ran out, and the next steps, from the cheapest: a smaller job, more GPUs, a memory plan."""
    first = detail.strip().splitlines()[0] if detail.strip() else "no detail"
    return (
        f"{request.name}: out of GPU memory on {device} generating {request.num_frames} frames at "
        f"{request.height}x{request.width} ({first}). "
        "Nothing was written and this worker stays usable. Next step: a smaller --resolution (480p) or "
        "fewer --num_output_frames; --device_map balanced to shard the model over several GPUs; or less "
        "memory: --acceleration low-memory (model CPU offload + tiled VAE), --offload text_encoder, "
        "--vae_tiling on, --memory_budget_gib (a deployment: settings={'acceleration': {...}})."
    )


def generate_or_explain(
    pipe, request: GenerationRequest, on_step, options: Acceleration | None = None
) -> GenerationResult:
    """`generate_request`, with out-of-memory turned into an actionable error that holds no GPU memory.

    An OOM's traceback keeps the failed step's activations alive (its frames reference them), and
    Prefect keeps the exception in the task's state: in a long-lived worker that memory would never
    come back. So the original is dropped before a new error with the same type is raised.
    """
    detail = None
    try:
        return generate_request(pipe, request, on_step, options)
    except torch.OutOfMemoryError as error:
        detail = str(error)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    raise torch.OutOfMemoryError(out_of_memory_message(request, resolve_device(request.device), detail))


@task(
    name="generate",
    task_run_name="generate-{request.name}",
    retry_condition_fn=retry_on_transient,
    cache_policy=NONE,  # results are frames and tensors: never hashed, never persisted
    persist_result=False,
)
def generate_video(request: GenerationRequest, settings: Settings) -> Generation:
    """Generate `request` on its variant's pipeline while holding its device's slot."""
    logger = get_run_logger()
    key = PipelineKey.for_request(request)
    limits = concurrency_limit_names(resolve_device(request.device), request.device_map)
    with device_slot(limits, settings):
        loads = PIPELINES.loads[key]
        pipe = PIPELINES.get(key)
        load_s = PIPELINES.load_seconds[key] if PIPELINES.loads[key] > loads else None
        if load_s is not None:
            logger.info("loaded %s @ %s in %.1f s", request.model_id, request.revision, load_s)
        pipe.set_progress_bar_config(disable=True)  # progress goes to the run log instead

        def on_step(index: int, total: int, seconds: float) -> None:
            if (index + 1) % max(1, total // 10) == 0 or index + 1 == total:  # about ten lines a run
                logger.info("step %d/%d: %.2f s", index + 1, total, seconds)

        result = generate_or_explain(pipe, request, on_step, settings.acceleration)
    timings = result.timings
    logger.info(
        "%s: %s %dx%dx%d seed %d in %.1f s (denoise %.1f s, decode %.1f s)",
        request.name, request.mode, request.num_frames, request.height, request.width, result.seed,
        timings.total_s, timings.denoising_s, timings.decode_s,
    )  # fmt: skip
    return Generation(result, describe_pipeline(pipe), load_s, limits)
