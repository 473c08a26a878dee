"""The `evaluate-variants` flow: an evaluation suite (assets x variants x seeds) as one comparison.

Cases run grouped by variant, so each variant's pipeline loads once (the cache holds one at a time). One
MLflow parent run holds a child run per case and is the page to open: which variant wins on which figure
(per mode, against the suite's first variant) in its description and metrics, a key-frame grid per
(asset, seed) in its image grid, and a labelled side-by-side MP4 per (asset, seed) to watch
(`tasks.report`, `tasks.compare`).
"""

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from prefect.states import Failed, State

from cosmos_pipeline.bundle import Row
from cosmos_pipeline.settings import Settings
from cosmos_pipeline.suites import DEFAULT_SUITE, EvaluationSuite, load_suite, suite_rows, variant_identity
from tasks.compare import Case, compare_variants
from tasks.dispatch import generate_tracked
from tasks.report import captions, log_evaluation, read_cases
from tasks.resolve import resolve_settings
from tasks.spool import sync_tracking_spool
from tasks.track import open_run, record_rejected_batch, start_run
from tasks.validate import validate_batch


@dataclass(frozen=True)
class EvaluationResult:
    parent_run_id: str
    experiment: str
    cases: int
    comparisons: list[str]  # the side-by-side files, one per (asset, seed)
    pipeline_loads: dict[str, int]  # per variant, as the generating processes saw them


def run_name() -> str:
    return f"evaluate-{Path(str(flow_run.parameters.get('suite', DEFAULT_SUITE))).stem}"


@task(name="expand-suite", cache_policy=NONE, persist_result=False)
def expand_suite(suite: str, settings: Settings) -> tuple[EvaluationSuite, list[Row], Path]:
    """The suite, its cases as the rows of a batch, and the folder its outputs go to (new per run)."""
    spec = load_suite(Path(suite), settings.policy)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    output_dir = settings.output_dir / "eval" / f"{spec.name}-{stamp}"
    rows = suite_rows(spec, settings, output_dir)
    get_run_logger().info(
        "suite %s: %d case(s) (%d asset(s) x %d variant(s) x %d seed(s)) into %s, MLflow experiment %s",
        spec.name, len(rows), len(spec.assets), len(spec.variants), len(spec.seeds), output_dir,
        spec.experiment or settings.eval_experiment,
    )  # fmt: skip
    return spec, rows, output_dir


def parent_tags(suite: str, spec: EvaluationSuite) -> dict[str, str]:
    """The parent's tags; it has no params, as MLflow's image grid prints every param over every image."""
    variants = [
        f"{v.label}={v.model_id}@{v.revision}"
        + (f"+lora:{v.lora_path.name}x{v.lora_scale:g}" if v.lora_path else "")
        for v in spec.variants
    ]
    return {
        "mode": "evaluation",
        "suite": spec.name,
        "suite_path": suite,
        "baseline": spec.variants[0].label,
        "variants": ", ".join(variants),
        "assets": ", ".join(path.stem for path in spec.assets),
        "seeds": ", ".join(map(str, spec.seeds)),
        "overrides": str(spec.overrides),
    }


@flow(name="evaluate-variants", flow_run_name=run_name)
def evaluate(
    suite: str = DEFAULT_SUITE, profile: str | None = None, settings: dict[str, Any] | None = None
) -> EvaluationResult | State:
    """Run every case of `suite`, then compare the variants on the parent run."""
    config = resolve_settings(profile, settings, evaluation=True)
    sync_tracking_spool(config)
    spec, rows, output_dir = expand_suite(suite, config)
    experiment = spec.experiment or config.eval_experiment
    batch = validate_batch(rows, config)
    if not batch.ok:
        record_rejected_batch(config, batch, suite, experiment)
        return Failed(message=batch.summary())
    parent = start_run(config, f"evaluate · {spec.name}", parent_tags(suite, spec), experiment=experiment)
    labels = {variant.identity: variant.label for variant in spec.variants}
    cases, loads, failed = [], dict.fromkeys(labels.values(), 0), 0
    for request in batch.requests:  # grouped by variant: each pipeline loads once
        label = labels[variant_identity(request)]
        job = open_run(request, config, batch, label, experiment, parent)
        try:
            record = generate_tracked(job)
        except Exception as error:  # one failed case must not void the others' comparison
            failed += 1
            get_run_logger().error(
                "case %s / %s / seed %s failed: %s", request.label, label, request.seed, error
            )
            continue
        loads[label] += int(record.pipeline_loaded)
        cases.append(Case(request.label, label, job.request.seed, Path(record.output_path), record.run_id))
    table = read_cases(config, experiment, parent)
    labelled = captions(table)
    cases = [replace(case, caption=labelled.get(case.run_id, ())) for case in cases]
    comparisons = compare_variants(cases, output_dir / "comparison")
    variants = [variant.label for variant in spec.variants]
    log_evaluation(config, parent, spec.name, variants, table, comparisons, loads, failed)
    if failed:
        return Failed(
            message=f"{failed} of {len(batch.requests)} evaluation case(s) failed; see MLflow run {parent}"
        )
    media = [str(comparison.media) for comparison in comparisons]
    return EvaluationResult(parent, experiment, len(cases), media, loads)
