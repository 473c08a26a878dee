"""The GPU step: one request on its variant's pipeline, one generation at a time per GPU.

The pipeline comes from the process-wide cache (`cosmos_pipeline.loading.PIPELINES`), so a variant loads
once per process however many requests use it. The device's slot (`cosmos_pipeline.slots`: a lock per
physical GPU of the host, dropped by the kernel when its holder dies) keeps two generations, from any
worker or checkout on the host, off the same GPU. Retries happen only for errors that can pass on their
own; an interrupt (Ctrl-C, SIGTERM) ends the generation at the next step, holding nothing.
"""

import contextlib
import gc
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.client.schemas.objects import State, TaskRun

from cosmos_pipeline.errors import GuardrailUnavailableError, InputError
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.settings import Settings
from cosmos_pipeline.storage import URI, local

if TYPE_CHECKING:  # torch and diffusers load inside the task, where the model runs
    from cosmos_pipeline.generate import GenerationResult

# Set when this process is asked to stop (a warm worker's SIGTERM): a running generation ends at its next
# step.
STOPPING = threading.Event()
RETRIES = 2  # transient errors only (`is_transient`): a network hiccup on a hub download, a full queue
RETRY_DELAY_S = 10.0


class GenerationStopped(KeyboardInterrupt):
    """This process was asked to stop while generating: nothing was written, the GPU slot is free."""


def is_transient(error: BaseException) -> bool:
    """Retried: the network (hub downloads, the Prefect/MLflow APIs), timeouts, I/O hiccups. Never: the
    same input fails the same way (bad input, the guardrail, missing files), and out-of-memory, which with
    one generation per GPU frees nothing before the retry (the fix is a smaller job or a memory plan)."""
    import torch

    from cosmos_pipeline.generate import UnsafeContentError

    permanent = (
        InputError,
        UnsafeContentError,
        GuardrailUnavailableError,
        torch.OutOfMemoryError,
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    )
    if isinstance(error, permanent):
        return False
    with contextlib.suppress(ImportError):  # a missing repo or revision will still be missing
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        if isinstance(error, RepositoryNotFoundError | RevisionNotFoundError | EntryNotFoundError):
            return False
    return isinstance(error, ConnectionError | TimeoutError | OSError)


def retry_on_transient(task, task_run: TaskRun, state: State) -> bool:
    """Prefect's `retry_condition_fn`: retry the failed run only if its error is transient."""
    try:
        state.result()
    except Exception as error:
        return is_transient(error)
    return False


@dataclass
class Generation:
    """A generation's result and how it ran: the pipeline's placement, whether it was loaded now, and the
    device slots it held."""

    result: "GenerationResult"
    pipeline: dict[str, str]
    load_s: float | None  # seconds to load the pipeline, None when it came from the cache
    slots: list[str]


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


def out_of_memory_message(request: GenerationRequest, detail: str) -> str:
    """What ran out, and the next steps, from the cheapest: a smaller job, more GPUs, a memory plan."""
    first = detail.strip().splitlines()[0] if detail.strip() else "no detail"
    return (
        f"{request.name}: out of GPU memory on {request.device} generating {request.num_frames} frames at "
        f"{request.height}x{request.width} ({first}). "
        "Nothing was written and this worker stays usable. Next step: a smaller --resolution (480p) or "
        "fewer --num_output_frames; --device_map balanced to shard the model over several GPUs; or less "
        "memory: --acceleration low-memory (model CPU offload + tiled VAE), --offload text_encoder, "
        "--vae_tiling on, --memory_budget_gib (a deployment: settings={'acceleration': {...}})."
    )


def generate_or_explain(pipe, request: GenerationRequest, on_step, settings: Settings) -> "GenerationResult":
    """`generate_request`, with out-of-memory turned into an actionable error that holds no GPU memory.

    An OOM's traceback keeps the failed step's activations alive (its frames reference them), and
    Prefect keeps the exception in the task's state: in a long-lived worker that memory would never
    come back. So the original is dropped before a new error with the same type is raised.
    """
    import torch

    from cosmos_pipeline.runner import generate_request

    detail = None
    try:
        return generate_request(pipe, request, on_step, settings.acceleration)
    except torch.OutOfMemoryError as error:
        detail = str(error)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    raise torch.OutOfMemoryError(out_of_memory_message(request, detail))


@task(
    name="generate",
    task_run_name="generate-{request.label}",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAY_S,
    retry_condition_fn=retry_on_transient,
    cache_policy=NONE,  # results are frames and tensors: never hashed, never persisted
    persist_result=False,
)
def generate_video(request: GenerationRequest, settings: Settings) -> Generation:
    """Generate `request` on its variant's pipeline while holding its GPU's slot."""
    import torch

    from cosmos_pipeline.loading import PIPELINES, PipelineKey, resolve_execution
    from cosmos_pipeline.slots import device_slot, gpu_ids

    logger = get_run_logger()
    request = resolve_execution(request)  # the device that runs it, and `dtype auto` made concrete
    gpus = gpu_ids(
        request.device, request.device_map, torch.cuda.device_count() if torch.cuda.is_available() else 0
    )
    wait = settings.gpu_wait_timeout_s
    with device_slot(gpus, settings.slot_dir, settings.gpu_slots, wait, request.label) as slots:
        adapter = request.lora_path  # a URI's adapter loads from this host's cache; the record keeps the URI
        if isinstance(adapter, URI):
            key = PipelineKey.for_request(request.model_copy(update={"lora_path": local(adapter)}))
        else:
            key = PipelineKey.for_request(request)
        loads = PIPELINES.loads[key]
        pipe = PIPELINES.get(key)
        load_s = PIPELINES.load_seconds[key] if PIPELINES.loads[key] > loads else None
        if load_s is not None:
            logger.info("loaded %s @ %s in %.1f s", request.model_id, request.revision, load_s)
        pipe.set_progress_bar_config(disable=True)  # progress goes to the run log instead

        def on_step(index: int, total: int, seconds: float) -> None:
            if STOPPING.is_set():
                raise GenerationStopped(f"{request.label}: stopped at step {index + 1}/{total}")
            if (index + 1) % max(1, total // 10) == 0 or index + 1 == total:  # about ten lines a run
                remaining = (total - index - 1) * seconds
                logger.info("step %d/%d: %.2f s (about %.0f s to go)", index + 1, total, seconds, remaining)

        result = generate_or_explain(pipe, request, on_step, settings)
    timings = result.timings
    logger.info(
        "%s: %s %dx%dx%d seed %d on %s %s in %.1f s (denoise %.1f s, decode %.1f s)",
        request.label, request.mode, request.num_frames, request.height, request.width, result.seed,
        request.device, request.dtype, timings.total_s, timings.denoising_s, timings.decode_s,
    )  # fmt: skip
    return Generation(result, describe_pipeline(pipe), load_s, slots)
