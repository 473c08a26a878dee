"""MLflow: one run per generation, created before the GPU step so that a failure is tracked too.

Through `MlflowClient` with explicit run ids (no active-run globals), so tasks can run anywhere, and
through `tasks.spool.RunWriter`, so a tracking server that is away costs no generation and loses no run
(its writes are spooled and synced later), and nothing secret is recorded (`tasks.scrub`).

What a run holds, for a person comparing variants in the UI: a name `<variant> · <asset> · seed <n>`; a
dozen params, the ones that differ between variants first (`RUN_PARAMS`); tags (mode, variant, asset,
request key, the Prefect flow run, versions, the worker); metrics (stage timings, per-step time, peak GPU
memory, whether the pipeline was loaded, output metrics, per-frame statistics); artifacts (the output, the
prompt, `config.json` with everything else needed to reproduce it, the validation and gate results, the
input or its hash, key frames for the image grid). Reading runs back is `tasks.report`.

Idempotency: a run is tagged with its request's key. A run of the same request for the same output that
was interrupted (its flow run crashed or was killed) is taken over by the next attempt instead of a
second run being created; one still in progress elsewhere makes the new attempt stop.
"""

import functools
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Run
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

import cosmos_pipeline
from cosmos_pipeline.acceleration.options import Acceleration
from cosmos_pipeline.batch import BatchReport
from cosmos_pipeline.media import content_hash
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.settings import Settings
from cosmos_pipeline.sidecar import read_sidecar
from cosmos_pipeline.storage import local
from tasks.generate import Generation
from tasks.postprocess import Postprocessed
from tasks.scrub import scrub, scrub_value
from tasks.spool import RunWriter, create_run, mlflow_client, server_reachable, unreachable

PARENT_TAG = "mlflow.parentRunId"
KEY_TAG = "request_key"
ERROR_TAGS = ("error", "error_type")
INTERRUPTED = "interrupted"  # the error tag of a run whose process was stopped (Ctrl-C, SIGTERM)
# The params a run shows, in the order the UI lists them: what tells variants apart, then the sampling.
RUN_PARAMS = (
    "variant", "model_id", "revision", "lora", "seed", "steps", "guidance", "resolution", "frames",
    "mode", "acceleration",
)  # fmt: skip
EXECUTION_PARAMS = ("dtype", "device")  # known once the generation ran (`auto` resolved), logged then


class DuplicateRequestError(RuntimeError):
    """The same request for the same output is being generated right now by another flow run."""


@dataclass(frozen=True)
class Job:
    """A validated request with its open MLflow run: what a flow hands over to be generated, here or on
    a warm worker. `sidecar` is what the flow adds to the output's sidecar (the run id, the flow run)."""

    request: GenerationRequest
    settings: Settings
    validation: BatchReport
    sidecar: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.sidecar["mlflow_run_id"]


@dataclass(frozen=True)
class GenerationRecord:
    """What a flow returns per request (frames never leave the process that generated them)."""

    name: str
    run_id: str | None
    output_path: str
    seed: int | None
    gate_passed: bool | None  # None: not measured now (the output was reused)
    pipeline_loaded: bool
    worker: str | None
    reused: bool = False


def reused_record(request: GenerationRequest) -> GenerationRecord:
    """The record of a request whose output already exists for the same request key (nothing is redone)."""
    assert request.output_path is not None
    sidecar = read_sidecar(request.output_path) or {}
    return GenerationRecord(
        name=request.label,
        run_id=sidecar.get("mlflow_run_id"),
        output_path=str(request.output_path),
        seed=sidecar.get("seed"),
        gate_passed=None,
        pipeline_loaded=False,
        worker=None,
        reused=True,
    )


@functools.cache
def environment_tags() -> dict[str, str]:
    """Versions of what produced the run (read from the installed packages: nothing is imported), and the
    project's git commit (with `-dirty` if modified)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    checkout = Path(cosmos_pipeline.__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    if commit != "unknown" and git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    return {
        "version.project": cosmos_pipeline.__version__,
        **{
            f"version.{package}": installed(package)
            for package in ("torch", "diffusers", "transformers", "prefect")
        },
        "version.python": sys.version.split()[0],
        "mlflow.source.git.commit": commit,
    }


def prefect_tags() -> dict[str, str]:
    """The Prefect flow run this MLflow run belongs to, and where to see it."""
    from prefect.runtime import deployment, flow_run

    tags = {
        "prefect.flow_run_id": str(flow_run.id or ""),
        "prefect.flow_run_name": str(flow_run.name or ""),
        "prefect.flow_name": str(flow_run.flow_name or ""),
        "prefect.flow_run_url": str(flow_run.ui_url or ""),
    }
    if deployment.id:
        tags["prefect.deployment"] = str(deployment.name)
    # Without a UI (the temporary server) Prefect still builds a URL, on "None": leave it out.
    return {key: value for key, value in tags.items() if value and not value.startswith("None/")}


def worker_name() -> str:
    """The process that generated: host and pid, as Prefect names task workers."""
    return f"{socket.gethostname()}-{os.getpid()}"


def variant_label(request: GenerationRequest) -> str:
    """A short variant name: the revision's last part (`post-trained`), with the LoRA if any."""
    label = request.revision.rsplit("/", 1)[-1]
    return label if request.lora_path is None else f"{label}+{request.lora_path.stem}"


def run_name(request: GenerationRequest, variant: str) -> str:
    return f"{variant} · {request.label} · seed {request.seed}"


def acceleration_name(options: Acceleration) -> str:
    """The preset the options are, or `custom`."""
    presets = ("default", "fast", "plain", "low-memory")
    return next((name for name in presets if Acceleration.preset(name) == options), "custom")


def run_params(request: GenerationRequest, variant: str, settings: Settings) -> dict[str, str]:
    """What a person compares between runs (`RUN_PARAMS`); everything else is in config.json and tags."""
    lora = "none" if request.lora_path is None else f"{request.lora_path.name} x{request.lora_scale:g}"
    values = {
        "variant": variant,
        "model_id": request.model_id,
        "revision": request.revision,
        "lora": lora,
        "seed": request.seed,
        "steps": request.num_inference_steps,
        "guidance": request.guidance_scale,
        "resolution": f"{request.height}x{request.width}",
        "frames": request.num_frames,
        "mode": request.mode,
        "acceleration": acceleration_name(settings.acceleration),
    }
    return {key: str(values[key]) for key in RUN_PARAMS}


def run_tags(request: GenerationRequest, variant: str, settings: Settings) -> dict[str, str]:
    note = f"**{request.mode}** `{request.label}` seed {request.seed}\n\n> {request.prompt}"
    return {
        "mode": request.mode,
        "variant": variant,
        "asset": request.label,
        "seed": str(request.seed),
        KEY_TAG: request.key(),
        "output_path": str(request.output_path),
        "profile": settings.profile,
        "mlflow.note.content": note[:5000],
        **prefect_tags(),
        **environment_tags(),
    }


def run_config(settings: Settings, request: GenerationRequest) -> dict[str, Any]:
    """Enough to reproduce the run from this file alone (secrets masked): settings, the request as asked,
    and the flow run's parameters."""
    from prefect.runtime import flow_run

    return scrub_value(
        {
            "settings": settings.model_dump(mode="json"),
            "request": request.model_dump(mode="json"),
            "flow_parameters": dict(flow_run.parameters or {}),
        }
    )


def _create(
    settings: Settings,
    name: str,
    tags: dict[str, str],
    params: dict[str, str],
    experiment: str | None,
    parent_run_id: str | None,
) -> str:
    if parent_run_id is not None:
        tags = {**tags, PARENT_TAG: parent_run_id}
    run_id = create_run(settings, experiment or settings.experiment, name, tags)
    RunWriter(settings, run_id).log_batch(params=params)
    get_run_logger().info("MLflow run %s (%s) in %s", run_id, name, scrub(settings.tracking_uri))
    return run_id


@task(name="start-run", cache_policy=NONE)
def start_run(
    settings: Settings,
    name: str,
    tags: dict[str, str],
    params: dict[str, str] | None = None,
    experiment: str | None = None,
) -> str:
    """A RUNNING MLflow run with its tags and params (an evaluation's parent run)."""
    tags = {**tags, **prefect_tags(), **environment_tags()}
    return _create(settings, name, tags, params or {}, experiment, None)


def _flow_run_over(flow_run_id: str | None) -> bool:
    """Whether the flow run that owned an unfinished MLflow run has ended (or is unknown to this API)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    if not flow_run_id:
        return True
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except (ObjectNotFound, ValueError):  # a temporary server's run (the CLI's): its process is gone
        return True
    return state is None or state.is_final()


def interrupted_runs(settings: Settings, experiment: str, request: GenerationRequest) -> list[Run]:
    """Unfinished runs of the same request for the same output, newest first (none when untracked)."""
    if not server_reachable(settings):
        return []
    client = mlflow_client(settings)
    try:
        found = client.get_experiment_by_name(experiment)
        runs = (
            client.search_runs(
                [found.experiment_id],
                f"tags.{KEY_TAG} = '{request.key()}' and attributes.status != 'FINISHED'",
                max_results=20,
                order_by=["attributes.start_time DESC"],
            )
            if found is not None
            else []
        )
    except Exception as error:
        if not unreachable(error):
            raise
        return []
    return [run for run in runs if run.data.tags.get("output_path") == str(request.output_path)]


@task(name="open-run", task_run_name="open-run-{request.label}", cache_policy=NONE, persist_result=False)
def open_run(
    request: GenerationRequest,
    settings: Settings,
    validation: BatchReport,
    variant: str | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
) -> Job:
    """The MLflow run this generation logs to, and the request to generate, as a `Job`.

    An interrupted run of the same request and output (KILLED, or RUNNING under a flow run that has
    ended) is taken over, with its seed if the seed was drawn, so a retry makes no second run. One
    RUNNING under a live flow run means the request is being generated now: DuplicateRequestError.
    """
    from prefect.runtime import flow_run

    variant = variant or variant_label(request)
    current = str(flow_run.id or "")
    run_id = None
    earlier = (
        [] if request.overwrite else interrupted_runs(settings, experiment or settings.experiment, request)
    )
    for run in earlier:
        owner = run.data.tags.get("prefect.flow_run_id")
        if run.info.status == "RUNNING" and owner != current and not _flow_run_over(owner):
            raise DuplicateRequestError(
                f"{request.label}: the same request (key {request.key()[:12]}) for {request.output_path} is "
                f"being generated now by flow run {owner} (MLflow run {run.info.run_id}); wait for it to "
                "finish, then trigger again: its output will be reused"
            )
        if run.info.status not in ("RUNNING", "KILLED"):
            continue  # a FAILED attempt stays the record of its error
        seed = run.data.params.get("seed")
        if request.seed_chosen and seed not in (None, "None"):
            request = request.model_copy(update={"seed": int(seed)})
        _take_over(settings, run)
        get_run_logger().info("taking over interrupted MLflow run %s of %s", run.info.run_id, request.label)
        run_id = run.info.run_id
        break
    if run_id is None:
        tags = run_tags(request, variant, settings)
        params = run_params(request, variant, settings)
        run_id = _create(settings, run_name(request, variant), tags, params, experiment, parent_run_id)
        RunWriter(settings, run_id).log_dict(run_config(settings, request), "config.json")
    # The key of the request as asked (`dtype auto`, `device cuda`): a rerun of the same command finds it.
    sidecar = {
        "request_key": request.key(),
        "mlflow_run_id": run_id,
        "mlflow_tracking_uri": scrub(settings.tracking_uri),
    }
    sidecar |= prefect_tags()
    return Job(request, settings, validation, sidecar)


def _take_over(settings: Settings, run: Run) -> None:
    client, run_id = mlflow_client(settings), run.info.run_id
    client.update_run(run_id, status="RUNNING")
    for key in ERROR_TAGS:
        if key in run.data.tags:
            client.delete_tag(run_id, key)
    attempts = int(run.data.tags.get("attempts", "1")) + 1
    previous = run.data.tags.get("prefect.flow_run_id", "")
    RunWriter(settings, run_id).log_batch(
        tags={**prefect_tags(), "attempts": str(attempts), "previous_flow_run": previous}
    )


def generation_metrics(generation: Generation, post: Postprocessed) -> list[Metric]:
    now = int(time.time() * 1000)
    result, timings = generation.result, generation.result.timings
    values = {
        "time/prompt_encoding_s": timings.prompt_encoding_s,
        "time/conditioning_s": timings.conditioning_s,
        "time/denoising_s": timings.denoising_s,
        "time/decode_s": timings.decode_s,
        "time/total_s": timings.total_s,
        "transformer_forwards": timings.forwards,
        "gate/flagged_frames": float(post.flagged_frames),
        "pipeline_loaded": float(generation.load_s is not None),  # 0: a warm pipeline served it
        **{key if "/" in key else f"output/{key}": value for key, value in post.metrics.items()},
    }
    if generation.load_s is not None:
        values["time/pipeline_load_s"] = generation.load_s
    if result.peak_memory_bytes is not None:
        values["memory/peak_gpu_gib"] = result.peak_memory_bytes / 2**30
    metrics = [Metric(key, float(value), now, 0) for key, value in values.items()]
    metrics += [Metric("time/step_s", seconds, now, step) for step, seconds in enumerate(timings.steps_s)]
    for column in post.frame_stats.columns.drop("row"):
        metrics += [
            Metric(f"frame/{column}", float(value), now, int(frame))
            for frame, value in zip(post.frame_stats["row"], post.frame_stats[column], strict=True)
            if value == value  # not NaN
        ]
    return metrics


@task(name="track", task_run_name="track-{job.request.label}", cache_policy=NONE, persist_result=False)
def log_generation(job: Job, generation: Generation, post: Postprocessed) -> GenerationRecord:
    """Everything about a finished generation, then mark the run FINISHED; returns its record."""
    writer = RunWriter(job.settings, job.run_id)
    result = generation.result
    request = result.request  # as it ran: device and dtype resolved
    writer.log_batch(
        params={key: str(getattr(request, key)) for key in EXECUTION_PARAMS},
        metrics=generation_metrics(generation, post),
        tags={
            "output_gate": post.gate_label,
            "worker": worker_name(),
            "device_slots": ",".join(generation.slots) or "none (CPU)",
            **{f"pipeline.{key}": value for key, value in generation.pipeline.items()},
            **{f"acceleration.{key}": str(value) for key, value in result.acceleration.items()},
            "guardrail": str(result.guardrail),
            **({"input_sha256": content_hash(request.input_path)} if request.input_path is not None else {}),
        },
    )
    for file in post.files:  # this host's copies: an uploaded output's staged files
        writer.log_artifact(file, "output")
    prompt = f"{request.prompt}\n\nnegative prompt:\n{request.negative_prompt or '(the pipeline default)'}\n"
    writer.log_text(prompt, "prompt.txt")
    writer.log_text(job.validation.dumps(), "validation/requests.json")
    writer.log_dict(post.gate, "validation/frames.json")
    writer.log_table(post.frame_stats, "frame_statistics.json")
    source = None if request.input_path is None else local(request.input_path)  # a URI's cached copy
    if source is not None and source.stat().st_size <= job.settings.max_input_artifact_mb * 2**20:
        writer.log_artifact(source, "input")
    for index, frame in post.keyframes:
        writer.log_image(frame, key="keyframes", step=index)
    writer.set_terminated("FINISHED")
    return GenerationRecord(
        name=request.label,
        run_id=job.run_id,
        output_path=str(post.output_path),
        seed=result.seed,
        gate_passed=post.gate_passed,
        pipeline_loaded=generation.load_s is not None,
        worker=worker_name(),
    )


def _record_error(writer: RunWriter, error: BaseException) -> None:
    kind = type(error).__name__
    # Not an Exception: Ctrl-C, SIGTERM (Prefect's TerminationSignal), a stopped worker.
    message = f"{kind}: {error}" if isinstance(error, Exception) else INTERRUPTED
    writer.log_batch(tags={"error": message[:5000], "error_type": kind})
    writer.log_text("".join(traceback.format_exception(type(error), error, error.__traceback__)), "error.txt")


def end_run(settings: Settings, run_id: str, error: BaseException) -> None:
    """Record why a run did not finish: FAILED for an error, KILLED (`interrupted`) when it was stopped."""
    writer = RunWriter(settings, run_id)
    _record_error(writer, error)
    writer.set_terminated("FAILED" if isinstance(error, Exception) else "KILLED")


@task(name="fail-run", cache_policy=NONE, persist_result=False)
def fail_run(settings: Settings, run_id: str, error: BaseException) -> None:
    """Mark the run FAILED with the error (tag) and its traceback (error.txt)."""
    end_run(settings, run_id, error)
    get_run_logger().error("MLflow run %s failed: %s: %s", run_id, type(error).__name__, error)


@task(name="record-rejected-batch", cache_policy=NONE, persist_result=False)
def record_rejected_batch(
    settings: Settings, report: BatchReport, asset: str, experiment: str | None = None
) -> str:
    """A FAILED run that holds the validation report, so a rejected batch is visible in MLflow too."""
    from prefect.runtime import flow_run

    tags = {"mode": "validation", "asset": asset, **prefect_tags(), **environment_tags()}
    run_id = create_run(settings, experiment or settings.experiment, f"rejected · {asset}", tags)
    writer = RunWriter(settings, run_id)
    writer.log_batch(
        params={"rows": str(report.rows), "failed_rows": str(report.failed_rows)[:500]},
        metrics=[Metric("validation/failed_rows", len(report.failed_rows), int(time.time() * 1000), 0)],
    )
    with tempfile.TemporaryDirectory() as directory:
        for name, text in (("validation.md", report.markdown()), ("validation.json", report.dumps())):
            path = Path(directory) / name
            path.write_text(text, encoding="utf-8")
            writer.log_artifact(path, "validation")
    parameters = dict(flow_run.parameters or {})
    writer.log_dict(
        {"settings": settings.model_dump(mode="json"), "flow_parameters": parameters}, "config.json"
    )
    writer.log_batch(tags={"error": report.summary()[:5000], "error_type": "BatchValidationError"})
    writer.set_terminated("FAILED")
    return run_id
