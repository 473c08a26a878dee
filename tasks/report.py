"""Reading runs back: the summary table of an experiment or an evaluation, and the evaluation report.

`cosmos-compare` prints the table; the evaluate flow logs it, with its report and side-by-side files,
on the evaluation's parent run.
"""

import time
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric
from prefect import task
from prefect.cache_policies import NONE

from cosmos_pipeline.settings import Settings
from tasks.scrub import scrub
from tasks.spool import RunWriter, unreachable
from tasks.track import PARENT_TAG

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
