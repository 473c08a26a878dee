"""MLflow: one run per generation, created before the GPU step so that a failure is tracked too.

Through `MlflowClient` with explicit run ids (no active-run globals), so tasks can run anywhere, and
through `tasks.spool.RunWriter`, so a tracking server that is away costs no generation and loses no
run (its writes are spooled and synced later), and nothing secret is recorded (`tasks.scrub`).
What a run holds: params (every request field, the variant, placement, acceleration, guardrail,
versions, git commit), tags (mode, variant, asset, request key, the Prefect flow run, the worker),
metrics (stage timings, per-step time, peak GPU memory, whether the pipeline was loaded, output
metrics, per-frame statistics) and artifacts (the output, the prompt, the resolved config, GX
results, the input or its hash, key frames for the image grid).

Idempotency: a run is tagged with its request's key. A run of the same request for the same output
that was interrupted (its flow run crashed or was killed) is taken over by the next attempt instead
of a second run being created; one still in progress elsewhere makes the new attempt stop.
"""

import functools
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric, Run
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

import cosmos_pipeline
from cosmos_pipeline.media import content_hash
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.settings import Settings
from tasks.generate import Generation
from tasks.postprocess import Postprocessed
from tasks.scrub import scrub, scrub_value
from tasks.spool import (
    RunWriter,
    create_run,
    mlflow_client,
    server_reachable,
    unreachable,
)
from tasks.validate import ValidationReport, write_report

PARAM_CHARS = 500  # long prompts are cut in params (the full text is the prompt.txt artifact)
PARENT_TAG = "mlflow.parentRunId"
KEY_TAG = "request_key"
ERROR_TAGS = ("error", "error_type")
SUMMARY_METRICS = (
    "time/total_s",
    "time/denoising_s",
    "output/temporal_consistency",
    "output/flicker",
    "output/sharpness",
    "output/exposure",
    "output/clip_high",
    "output/conditioning_psnr",
    "output/conditioning_ssim",
)


class DuplicateRequestError(RuntimeError):
    """The same request for the same output is being generated right now by another flow run."""


@functools.cache
def environment_params() -> dict[str, str]:
    """Versions of what produced the run, and the project's git commit (with `-dirty` if modified)."""
    import diffusers
    import prefect
    import torch
    import transformers

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
        "version.torch": torch.__version__,
        "version.diffusers": diffusers.__version__,
        "version.transformers": transformers.__version__,
        "version.prefect": prefect.__version__,
        "version.python": sys.version.split()[0],
        "git_commit": commit,
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


def _cut(value: Any) -> str:
    text = "None" if value is None else str(value)
    return text if len(text) <= PARAM_CHARS else text[: PARAM_CHARS - 1] + "…"


def request_params(request: GenerationRequest) -> dict[str, str]:
    """Every resolved request field, and what derives from them (mode, effective guardrail)."""
    params = {key: _cut(value) for key, value in request.model_dump(mode="json").items()}
    params["mode"] = request.mode
    params["guardrail_enabled"] = str(request.guardrail_enabled)
    return params


def run_tags(request: GenerationRequest, variant: str | None = None) -> dict[str, str]:
    return {
        "mode": request.mode,
        "variant": variant or variant_label(request),
        "asset": request.name or "generation",
        "seed": str(request.seed),
        KEY_TAG: request.key(),
    }


def _start(
    settings: Settings,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, str] | None,
    experiment: str | None,
    parent_run_id: str | None,
) -> str:
    all_tags = {**tags, **prefect_tags(), "profile": settings.profile}
    all_tags["mlflow.source.git.commit"] = environment_params()["git_commit"]
    if parent_run_id is not None:
        all_tags[PARENT_TAG] = parent_run_id
    run_id = create_run(settings, experiment or settings.experiment, run_name, all_tags)
    RunWriter(settings, run_id).log_batch(params={**(params or {}), **environment_params()})
    get_run_logger().info("MLflow run %s (%s) in %s", run_id, run_name, scrub(settings.tracking_uri))
    return run_id


@task(name="start-run", cache_policy=NONE)
def start_run(
    settings: Settings,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, str] | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a RUNNING MLflow run with its tags and params; its id is what later tasks log to."""
    return _start(settings, run_name, tags, params, experiment, parent_run_id)


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
    output = _cut(str(request.output_path))
    return [run for run in runs if run.data.params.get("output_path") == output]


@task(name="open-run", cache_policy=NONE, persist_result=False)
def open_run(
    settings: Settings,
    request: GenerationRequest,
    variant: str | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
) -> tuple[str, GenerationRequest]:
    """The MLflow run this generation logs to, and the request to generate.

    An interrupted run of the same request and output (KILLED, or RUNNING under a flow run that has
    ended) is taken over, with its seed if the seed was drawn, so a retry makes no second run. One
    RUNNING under a live flow run means the request is being generated now: DuplicateRequestError.
    """
    from prefect.runtime import flow_run

    logger = get_run_logger()
    current = str(flow_run.id or "")
    for run in (
        [] if request.overwrite else interrupted_runs(settings, experiment or settings.experiment, request)
    ):
        owner = run.data.tags.get("prefect.flow_run_id")
        if run.info.status == "RUNNING" and owner != current and not _flow_run_over(owner):
            raise DuplicateRequestError(
                f"{request.name}: the same request (key {request.key()[:12]}) for {request.output_path} is "
                f"being generated now by flow run {owner} (MLflow run {run.info.run_id}); wait for it to "
                "finish, then trigger again: its output will be reused"
            )
        if run.info.status not in ("RUNNING", "KILLED"):
            continue  # a FAILED attempt stays the record of its error
        seed = run.data.params.get("seed")
        if request.seed_chosen and seed not in (None, "None"):
            request = request.model_copy(update={"seed": int(seed)})
        _take_over(settings, run, request, current)
        logger.info("taking over interrupted MLflow run %s of %s", run.info.run_id, request.name)
        return run.info.run_id, request
    run_id = _start(
        settings,
        run_name=request.name or "generation",
        tags=run_tags(request, variant),
        params=request_params(request),
        experiment=experiment,
        parent_run_id=parent_run_id,
    )
    return run_id, request


def _take_over(settings: Settings, run: Run, request: GenerationRequest, flow_run_id: str) -> None:
    client, run_id = mlflow_client(settings), run.info.run_id
    client.update_run(run_id, status="RUNNING")
    for key in ERROR_TAGS:
        if key in run.data.tags:
            client.delete_tag(run_id, key)
    attempts = int(run.data.tags.get("attempts", "1")) + 1
    params = {**request_params(request), **environment_params()}
    RunWriter(settings, run_id).log_batch(
        params={key: value for key, value in params.items() if key not in run.data.params},
        tags={**prefect_tags(), "attempts": str(attempts), "previous_flow_run": run.data.tags.get(
            "prefect.flow_run_id", "")},
    )  # fmt: skip


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
        "gate/frames_passed": float(post.gate_passed),
        "pipeline_loaded": float(generation.load_s is not None),  # 0: a warm pipeline served it
        **{f"output/{key}": value for key, value in post.metrics.items()},
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
            if pd.notna(value)
        ]
    return metrics


def _config(settings: Settings, request: GenerationRequest, context: dict[str, Any]) -> dict[str, Any]:
    """The resolved configuration: enough to reproduce the run from this file alone (secrets masked)."""
    return scrub_value(
        {
            "settings": settings.model_dump(mode="json"),
            "request": request.model_dump(mode="json"),
            "flow": context,
        }
    )


@task(name="track", task_run_name="track-{run_id}", cache_policy=NONE, persist_result=False)
def log_generation(
    settings: Settings,
    run_id: str,
    generation: Generation,
    post: Postprocessed,
    validation: ValidationReport,
    context: dict[str, Any],
) -> None:
    """Everything about a finished generation, then mark the run FINISHED."""
    writer = RunWriter(settings, run_id)
    result, request = generation.result, generation.result.request
    params = {f"pipeline.{key}": _cut(value) for key, value in generation.pipeline.items()}
    params |= {f"acceleration.{key}": _cut(value) for key, value in result.acceleration.items()}
    params |= {"guardrail_ran": str(result.guardrail), "device_limits": ",".join(generation.limits)}
    tags = {
        "output_gate": "passed" if post.gate_passed else "failed",
        "output_path": str(post.output_path),
        "worker": worker_name(),
    }
    tags["mlflow.note.content"] = (
        f"**{request.mode}** `{request.name}` seed {result.seed}\n\n> {request.prompt}"
    )
    if request.input_path is not None:
        tags["input_sha256"] = content_hash(request.input_path)
    writer.log_batch(params=params, metrics=generation_metrics(generation, post), tags=tags)

    writer.log_artifact(post.output_path, "output")
    writer.log_artifact(post.sidecar_path, "output")
    prompt = f"{request.prompt}\n\nnegative prompt:\n{request.negative_prompt or '(the pipeline default)'}\n"
    writer.log_text(prompt, "prompt.txt")
    writer.log_dict(_config(settings, request, context), "config.json")
    writer.log_dict(validation.as_json(), "validation/requests.json")
    writer.log_dict(post.gate, "validation/frames.json")
    writer.log_table(post.frame_stats, "frame_statistics.json")
    if (
        request.input_path is not None
        and request.input_path.stat().st_size <= settings.max_input_artifact_mb * 2**20
    ):
        writer.log_artifact(request.input_path, "input")
    for index, frame in post.keyframes:
        writer.log_image(frame, key="keyframes", step=index)
    writer.set_terminated("FINISHED")


def _record_error(writer: RunWriter, error: BaseException) -> None:
    kind = type(error).__name__
    writer.log_batch(tags={"error": _cut(f"{kind}: {error}"), "error_type": kind})
    writer.log_text("".join(traceback.format_exception(type(error), error, error.__traceback__)), "error.txt")


def end_run(settings: Settings, run_id: str, error: BaseException) -> None:
    """Record why a run did not finish: FAILED for an error, KILLED when its process was stopped."""
    writer = RunWriter(settings, run_id)
    _record_error(writer, error)
    writer.set_terminated("FAILED" if isinstance(error, Exception) else "KILLED")


@task(name="fail-run", cache_policy=NONE, persist_result=False)
def fail_run(settings: Settings, run_id: str, error: BaseException) -> None:
    """Mark the run FAILED with the error (tag) and its traceback (error.txt)."""
    end_run(settings, run_id, error)
    get_run_logger().error("MLflow run %s failed: %s: %s", run_id, type(error).__name__, error)


@task(name="record-validation-failure", cache_policy=NONE, persist_result=False)
def record_validation_failure(
    settings: Settings,
    report: ValidationReport,
    error: BaseException,
    context: dict[str, Any],
    experiment: str | None = None,
) -> str:
    """A FAILED run that holds the validation report, so a rejected batch is visible in MLflow too."""
    tags = {"mode": "validation", "asset": str(context.get("input_path") or "batch"), **prefect_tags()}
    run_id = create_run(settings, experiment or settings.experiment, "validation", tags)
    writer = RunWriter(settings, run_id)
    writer.log_batch(
        params={"rows": str(report.rows), "failed_rows": _cut(report.failed_rows), **environment_params()},
        metrics=[Metric("validation/failed_rows", len(report.failed_rows), int(time.time() * 1000), 0)],
    )
    with tempfile.TemporaryDirectory() as directory:
        for path in write_report(report, Path(directory)):
            writer.log_artifact(path, "validation")
    writer.log_dict({"settings": settings.model_dump(mode="json"), "flow": context}, "config.json")
    _record_error(writer, error)
    writer.set_terminated("FAILED")
    return run_id


# ----------------------------------------------------------------------------- reading runs back


def search_runs(tracking_uri: str, experiment: str, filter_string: str = "") -> pd.DataFrame:
    """`mlflow.search_runs` of one experiment (columns `params.*`, `metrics.*`, `tags.*`)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(
        experiment_names=[experiment], filter_string=filter_string, output_format="pandas"
    )


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per generation run: asset, variant, seed, mode, status, the summary metrics, run id.

    Validation records and evaluation parents are left out: they are not generations.
    """
    if runs.empty:
        return pd.DataFrame(columns=["asset", "variant", "seed", "mode", "status", "run_id"])
    if "tags.mode" in runs:
        runs = runs[~runs["tags.mode"].isin(["validation", "evaluation"])]
    columns = {
        "tags.asset": "asset",
        "tags.variant": "variant",
        "tags.seed": "seed",
        "tags.mode": "mode",
        "status": "status",
        **{f"metrics.{key}": key.split("/", 1)[-1] for key in SUMMARY_METRICS},
        "run_id": "run_id",
    }
    table = pd.DataFrame({name: runs[column] if column in runs else None for column, name in columns.items()})
    table = table.dropna(axis="columns", how="all")
    return table.sort_values([c for c in ("asset", "seed", "variant") if c in table]).reset_index(drop=True)


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table (pandas' to_markdown needs the optional `tabulate`)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
        return "" if value is None else str(value).replace("|", "\\|")

    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    lines = ["| " + " | ".join(cell(value) for value in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *lines]) + "\n"


def ui_hint(settings: Settings) -> str:
    """The command that opens this store in MLflow's UI."""
    uri = scrub(settings.tracking_uri)
    if uri.startswith(("http://", "https://", "databricks")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"


def evaluation_markdown(
    suite: str, parent_run_id: str, table: pd.DataFrame, comparisons: list[Path], loads: dict[str, int]
) -> str:
    """The evaluation report: per-variant means, every case, the side-by-side files, pipeline loads."""
    metrics = [
        column
        for column in table.columns
        if column not in ("asset", "variant", "seed", "mode", "status", "run_id")
    ]
    means = table.groupby("variant", sort=False)[metrics].mean(numeric_only=True).reset_index()
    lines = [
        f"# Evaluation `{suite}`",
        "",
        f"MLflow parent run `{parent_run_id}`: {len(table)} case(s), "
        f"{int((table['status'] == 'FINISHED').sum())} finished.",
        "",
        "## Mean per variant",
        "",
        markdown_table(means),
        "## Cases",
        "",
        markdown_table(table),
        "## Side by side",
        "",
        *[f"- `comparison/{path.name}`" for path in comparisons],
        "",
        "## Pipeline loads",
        "",
        *[f"- {label}: {count}" for label, count in loads.items()],
        "",
    ]
    return "\n".join(lines)


@task(name="report-evaluation", cache_policy=NONE, persist_result=False)
def log_evaluation(
    settings: Settings,
    experiment: str,
    parent_run_id: str,
    suite: str,
    comparisons: list[Path],
    loads: dict[str, int],
    failed: int,
) -> pd.DataFrame:
    """Summary table, report and side-by-side files on the parent run (and the report in Prefect)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    writer = RunWriter(settings, parent_run_id)
    runs = pd.DataFrame()
    if not writer.spooled:  # spooled cases are summarised in MLflow once they are synced
        try:
            runs = search_runs(settings.tracking_uri, experiment, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
        except Exception as error:
            if not unreachable(error):
                raise
    table = summary_table(runs)
    report = evaluation_markdown(suite, parent_run_id, table, comparisons, loads)
    writer.log_table(table, "summary.json")
    writer.log_text(report, "report.md")
    for path in comparisons:
        writer.log_artifact(path, "comparison")
    now = int(time.time() * 1000)
    metrics = [Metric(f"pipeline_loads/{label}", count, now, 0) for label, count in loads.items()]
    metrics += [Metric("cases", len(table), now, 0), Metric("failed_cases", failed, now, 0)]
    writer.log_batch(metrics=metrics)
    writer.set_terminated("FAILED" if failed else "FINISHED")
    create_markdown_artifact(key="evaluation-report", markdown=report, description=f"evaluation {suite}")
    create_table_artifact(
        key="evaluation-summary", table=table.astype(object).where(table.notna(), None).to_dict("records")
    )
    return table
