"""The `evaluate-variants` flow: an evaluation suite (assets x variants x seeds) as one comparison.

Cases run grouped by variant, so each variant's pipeline loads once (the cache holds one at a
time). One MLflow parent run holds a child run per case, a summary table (`summary.json`), a
markdown report and a side-by-side MP4 per (asset, seed) with the variants labelled.
"""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from cosmos_pipeline.errors import InputError
from cosmos_pipeline.policy import check_readable
from cosmos_pipeline.settings import CONFIG_DIRS, EvaluationSuite, Settings, suite_rows, variant_identity
from flows.common import generate_tracked, start, validated
from tasks.compare import Case, compare_variants
from tasks.track import log_evaluation, start_run

DEFAULT_SUITE = "configs/eval/variants.toml"


def run_name() -> str:
    return f"evaluate-{Path(str(flow_run.parameters.get('suite', DEFAULT_SUITE))).stem}"


def check_suite_path(suite: Path, settings: Settings) -> None:
    """A suite is read from configs/ or, like any input, from the policy's input roots."""
    if any(suite.resolve().is_relative_to(folder.resolve()) for folder in CONFIG_DIRS):
        return
    try:
        check_readable(suite, settings.policy, "suite")
    except InputError as error:
        raise InputError(f"{error}, or in configs/") from None


@flow(name="evaluate-variants", flow_run_name=run_name)
def evaluate(
    suite: str = DEFAULT_SUITE,
    profile: str | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every case of `suite`, then compare the variants; returns the parent run id and its outputs."""
    logger = get_run_logger()
    config = start(profile, settings)
    check_suite_path(Path(suite), config)
    spec = EvaluationSuite.load(Path(suite))
    experiment = spec.experiment or config.eval_experiment
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    output_dir = config.output_dir / "eval" / f"{spec.name}-{stamp}"
    context = {"suite": suite, "profile": profile, "settings": settings, "output_dir": str(output_dir)}

    requests, report = validated(config, lambda: suite_rows(spec, config, output_dir), context, experiment)
    parent = start_run(
        config,
        run_name=f"evaluate-{spec.name}",
        tags={"mode": "evaluation", "suite": spec.name},
        params={
            "suite": suite,
            "assets": ",".join(path.name for path in spec.assets),
            "variants": ",".join(
                f"{v.label}={v.model_id}@{v.revision}"
                + (f"+lora:{v.lora_path}x{v.lora_scale}" if v.lora_path else "")
                for v in spec.variants
            ),
            "seeds": ",".join(map(str, spec.seeds)),
            "overrides": str(spec.overrides),
        },
        experiment=experiment,
    )
    labels = {variant.identity: variant.label for variant in spec.variants}
    cases, failed = [], 0
    # Loads per variant, as the generating process saw them (this one, or a warm worker).
    loads = dict.fromkeys(labels.values(), 0)
    for request in requests:  # suite_rows groups them by variant
        label = labels[variant_identity(request)]
        try:
            record = generate_tracked(request, config, report, context, label, experiment, parent)
        except Exception as error:  # one failed case must not void the others' comparison
            failed += 1
            logger.error("case %s / %s / seed %s failed: %s", request.name, label, request.seed, error)
            continue
        loads[label] += int(record["pipeline_loaded"])
        cases.append(
            Case(
                request.name or "generation",
                label,
                record["seed"],
                Path(record["output_path"]),
                record["run_id"],
            )
        )

    comparisons = compare_variants(cases, output_dir / "comparison")
    table = log_evaluation(config, experiment, parent, spec.name, comparisons, loads, failed)
    if failed:
        raise RuntimeError(f"{failed} of {len(requests)} evaluation case(s) failed; see MLflow run {parent}")
    return {
        "parent_run_id": parent,
        "experiment": experiment,
        "cases": len(table),
        "comparisons": [str(path) for path in comparisons],
        "pipeline_loads": loads,
    }
