"""Reading runs back: the summary table of an experiment or an evaluation, and the evaluation's verdict.

`cosmos-compare` prints the table; the evaluate flow reads its cases back, captions the comparison media
with their headline figures, and logs on the parent run what a person opening it needs first:
- metrics `<mode>/<figure>/<variant>` (the variant's mean over its finished cases of that mode; modes are
  never mixed) and `<mode>/<figure>/<variant> - <baseline>` (its difference from the suite's first variant),
- the description (the run page's first block) and `report.md`: which variant is better on which figure,
  with the direction that counts as better, then every case with links to its runs and comparison media;
  `report.md` goes on with the wide table of every figure of every case,
- the key-frame grid of every (asset, seed) as `log_image(key="comparison/<asset> seed <n>", step=seed)`,
  so MLflow's image grid shows them on the parent without expanding its children.
"""

import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Metric
from prefect import task
from prefect.cache_policies import NONE

from cosmos_pipeline.media import read_image
from cosmos_pipeline.settings import Settings
from tasks.compare import Comparison
from tasks.scrub import scrub
from tasks.spool import RunWriter, unreachable
from tasks.track import PARENT_TAG

CASE_COLUMNS = ("asset", "variant", "seed", "mode", "status")
DESCRIPTION_CHARS = 5000  # MLflow keeps tag values up to 8000 characters
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store


@dataclass(frozen=True)
class Figure:
    """A per-run metric as reports show it."""

    key: str  # the generation run's metric
    name: str  # its column in tables and its part of the parent's metric keys
    better: str | None  # "higher" or "lower"; None: shown, never ranked (no side is better)


FIGURES = (
    Figure("quality/adherence", "adherence", "higher"),  # toy-world prompts: colour and motion both right
    Figure("quality/colour_right", "colour_right", "higher"),
    Figure("quality/direction_right", "direction_right", "higher"),
    Figure("output/conditioning_psnr", "conditioning_psnr", "higher"),  # Image2World/Video2World input kept
    Figure("output/conditioning_ssim", "conditioning_ssim", "higher"),
    Figure("output/flicker", "flicker", "lower"),
    Figure("output/clip_high", "clip_high", "lower"),
    Figure("output/clip_low", "clip_low", "lower"),
    Figure("gate/flagged_frames", "flagged_frames", "lower"),
    Figure("time/total_s", "total_s", "lower"),
    Figure("output/temporal_consistency", "temporal_consistency", None),  # 1 is a frozen video
    Figure("output/sharpness", "sharpness", None),  # noise is sharp too
    Figure("output/exposure", "exposure", None),
)
BY_NAME = {figure.name: figure for figure in FIGURES}
HEADLINE = ("adherence", "conditioning_psnr", "flicker", "total_s")  # a case's label: the first two it has


def search_runs(tracking_uri: str, experiment: str, filter_string: str = "") -> pd.DataFrame:
    """`mlflow.search_runs` of one experiment (columns `params.*`, `metrics.*`, `tags.*`)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(
        experiment_names=[experiment], filter_string=filter_string, output_format="pandas"
    )


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One line per generation run: asset, variant, seed, mode, status, its figures, run id.

    Validation records and evaluation parents are left out: they are not generations.
    """
    if runs.empty:
        return pd.DataFrame(columns=[*CASE_COLUMNS, "run_id"])
    if "tags.mode" in runs:
        runs = runs[~runs["tags.mode"].isin(["validation", "evaluation"])]
    columns = {
        **{f"tags.{name}": name for name in CASE_COLUMNS if name != "status"},
        "status": "status",
        **{f"metrics.{figure.key}": figure.name for figure in FIGURES},
        "run_id": "run_id",
    }
    table = pd.DataFrame({name: runs[column] if column in runs else None for column, name in columns.items()})
    table = table[[*CASE_COLUMNS, *(c for c in table.columns if c not in CASE_COLUMNS)]]
    table = table.dropna(axis="columns", how="all")
    return table.sort_values([c for c in ("asset", "seed", "variant") if c in table]).reset_index(drop=True)


def number(value: Any, digits: int = 3, sign: bool = False) -> str:
    """`value` to `digits` significant digits (what a table shows, and what ties are decided on)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float | np.floating):
        text = f"{value:+.{digits}g}" if sign else f"{value:.{digits}g}"
        return text if abs(value) < 1e4 else f"{value:{'+' if sign else ''}.0f}"
    return str(value)


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table (pandas' to_markdown needs the optional `tabulate`)."""

    def cell(value: Any) -> str:
        return number(value, digits).replace("|", "\\|")

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


def ui_address(settings: Settings, page: str) -> str:
    """The address of a UI page (`#/experiments/...`): on the tracking server, or on a local `mlflow ui`."""
    uri = scrub(settings.tracking_uri)
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_ADDRESS
    return f"{base}/{page}"


# ----------------------------------------------------------------------------- per-variant figures


def figures_of(table: pd.DataFrame) -> list[Figure]:
    return [figure for figure in FIGURES if figure.name in table]


def variant_means(table: pd.DataFrame, variants: list[str]) -> dict[str, pd.DataFrame]:
    """Per mode (in order of appearance): the mean of every figure per variant over its finished cases,
    variants as rows in the suite's order (a variant with no finished case of that mode is left out)."""
    finished = table[table["status"] == "FINISHED"] if "status" in table else table
    names = [figure.name for figure in figures_of(finished)]
    means = {}
    for mode in finished["mode"].drop_duplicates() if "mode" in finished else []:
        rows = finished[finished["mode"] == mode]
        grouped = rows.groupby("variant")[names].mean(numeric_only=True)
        means[mode] = grouped.reindex([v for v in variants if v in grouped.index]).dropna(axis=1, how="all")
    return means


def parent_metrics(table: pd.DataFrame, variants: list[str]) -> dict[str, float]:
    """`<mode>/<figure>/<variant>` means and `<mode>/<figure>/<variant> - <baseline>` differences.

    The baseline is the suite's first variant; values that are not finite (PSNR of identical frames) are
    left out, as MLflow charts cannot draw them.
    """
    baseline, metrics = variants[0], {}
    for mode, means in variant_means(table, variants).items():
        for name in means.columns:
            column = means[name]
            for variant, value in column.items():
                metrics[f"{mode}/{name}/{variant}"] = value
            if baseline in column.index:
                for variant in column.index.drop(baseline):
                    metrics[f"{mode}/{name}/{variant} - {baseline}"] = column[variant] - column[baseline]
    return {key: float(value) for key, value in metrics.items() if np.isfinite(value)}


def best(values: pd.Series, better: str | None) -> list[str]:
    """The variants whose value, as a table shows it, is the best one ([] when all are equal)."""
    shown = {variant: float(number(value)) for variant, value in values.dropna().items()}
    if len(set(shown.values())) < 2:
        return []
    top = (max if better == "higher" else min)(shown.values())
    return [variant for variant, value in shown.items() if value == top]


def winners(table: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """One line per (mode, ranked figure): the direction that is better, each variant's mean, the change
    of every other variant from the baseline, and the winner ("tie" when the shown values are equal)."""
    baseline, lines = variants[0], []
    for mode, means in variant_means(table, variants).items():
        for name in means.columns:
            figure = BY_NAME[name]
            if figure.better is None:
                continue
            column = means[name]
            line = {"mode": mode, "figure": name, "better": figure.better}
            line |= {variant: number(column.get(variant)) for variant in variants}
            for variant in variants[1:]:
                change = column.get(variant, np.nan) - column.get(baseline, np.nan)
                line[f"{variant} - {baseline}"] = number(change, sign=True)
            top = best(column, figure.better)
            if top:
                line["winner"] = ", ".join(f"**{variant}**" for variant in top)
            else:  # equal, or only one variant measured it
                line["winner"] = "tie" if column.notna().sum() > 1 else ""
            lines.append(line)
    return pd.DataFrame(lines)


def verdict(table: pd.DataFrame, variants: list[str]) -> str:
    """One sentence per other variant: the figures, per mode, on which it beats the baseline or loses."""
    baseline = variants[0]
    means = variant_means(table, variants)
    if not means:
        return "No finished case to compare."
    sentences = []
    for variant in variants[1:]:
        parts = []
        for mode, frame in means.items():
            if variant not in frame.index or baseline not in frame.index:
                continue
            ranked = [name for name in frame.columns if BY_NAME[name].better]
            tops = {name: best(frame.loc[[baseline, variant], name], BY_NAME[name].better) for name in ranked}
            won = [name for name, top in tops.items() if top == [variant]]
            lost = [name for name, top in tops.items() if top == [baseline]]
            parts.append(
                f"{mode}: better on {', '.join(won) or 'nothing'}; worse on {', '.join(lost) or 'nothing'};"
                f" equal on {len(ranked) - len(won) - len(lost)} figure(s)"
            )
        sentences.append(
            f"**{variant}** vs **{baseline}** (baseline): " + ". ".join(parts or ["no shared mode"])
        )
    return "\n\n".join(sentences) + "."


def captions(table: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    """Per run id: its two headline figures as comparison media label them, marked `best` where it beats
    the other variants of its (asset, seed)."""
    finished = table[table["status"] == "FINISHED"] if "status" in table else table
    labels: dict[str, tuple[str, ...]] = {}
    for _, group in finished.groupby(["asset", "seed"]):
        names = [name for name in HEADLINE if name in group and group[name].notna().any()][:2]
        tops = {name: best(group.set_index("run_id")[name], BY_NAME[name].better) for name in names}
        for row in group.to_dict("records"):
            labels[row["run_id"]] = tuple(
                f"{name} {number(row[name])} ({BY_NAME[name].better} is better)"
                + (" · best" if row["run_id"] in tops[name] else "")
                for name in names
                if pd.notna(row[name])
            )
    return labels


# ----------------------------------------------------------------------------- the report


def headline(row: dict[str, Any]) -> str:
    """A case's first headline figure ("flicker 0.031"), or its status when it has none."""
    name = next((name for name in HEADLINE if pd.notna(row.get(name))), None)
    return f"{name} {number(row[name])}" if row["status"] == "FINISHED" and name else row["status"].lower()


@dataclass(frozen=True)
class Links:
    """Markdown links into the MLflow UI (hash routes, so they work on any server the store is opened on);
    plain text when the runs are not on the server yet (spooled)."""

    experiment_id: str | None
    parent_run_id: str

    def run(self, text: str, run_id: str) -> str:
        return f"[{text}](#/experiments/{self.experiment_id}/runs/{run_id})" if self.experiment_id else text

    def artifact(self, text: str, path: str) -> str:
        if not self.experiment_id:
            return f"`{path}`"
        return f"[{text}](#/experiments/{self.experiment_id}/runs/{self.parent_run_id}/artifacts/{path})"


def cases_table(table: pd.DataFrame, variants: list[str], comparisons: list[Comparison], links: Links) -> str:
    """One line per (asset, seed): each variant's run, with its headline figure, and the comparison media."""
    media = {(c.asset, c.seed): c for c in comparisons}
    lines = []
    for (asset, seed), group in table.groupby(["asset", "seed"], sort=False):
        line = {"mode": group["mode"].iloc[0], "asset": asset, "seed": seed}
        for variant in variants:
            rows = group[group["variant"] == variant].to_dict("records")
            line[variant] = links.run(headline(rows[0]), rows[0]["run_id"]) if rows else ""
        found = media.get((asset, int(seed)))
        line["side by side"] = (
            links.artifact("video", f"comparison/{found.media.name}")
            + " · "
            + links.artifact("key frames", f"comparison/{found.keyframes.name}")
            if found
            else ""
        )
        lines.append(line)
    return markdown_table(pd.DataFrame(lines)) if lines else "No case finished.\n"


def summary_markdown(
    suite: str, table: pd.DataFrame, variants: list[str], comparisons: list[Comparison], links: Links
) -> str:
    """What the parent run's page opens with: the verdict, the winner per figure, every case's links."""
    ranked = winners(table, variants)
    return "\n".join(
        [
            verdict(table, variants),
            "",
            f"### Winner per figure (`{suite}`: mean per mode over finished cases)",
            "",
            markdown_table(ranked) if not ranked.empty else "No ranked figure was measured.\n",
            "### Cases",
            "",
            cases_table(table, variants, comparisons, links),
        ]
    )


def evaluation_markdown(
    suite: str,
    table: pd.DataFrame,
    variants: list[str],
    comparisons: list[Comparison],
    loads: dict[str, int],
    links: Links,
) -> str:
    """`report.md`: the summary, then every figure of every case and the pipeline loads."""
    finished = int((table["status"] == "FINISHED").sum()) if "status" in table else 0
    cases = table.assign(run=[links.run(run_id[:8], run_id) for run_id in table["run_id"]]).drop(
        columns="run_id"
    )
    return "\n".join(
        [
            f"# Evaluation `{suite}`: {' vs '.join(variants)}",
            "",
            f"{len(table)} case(s), {finished} finished; baseline **{variants[0]}**.",
            "",
            summary_markdown(suite, table, variants, comparisons, links),
            "## Every figure of every case",
            "",
            markdown_table(cases),
            "## Pipeline loads",
            "",
            *[f"- {label}: {count}" for label, count in loads.items()],
            "",
        ]
    )


def description(summary: str, links: Links) -> str:
    """The parent's description: the summary, cut at a line within MLflow's tag limit if it must be."""
    more = f"\n\nThe whole report: {links.artifact('report.md', 'report.md')}"
    if len(summary) + len(more) <= DESCRIPTION_CHARS:
        return summary + more
    cut = summary[: DESCRIPTION_CHARS - len(more) - 40].rsplit("\n", 1)[0]
    return cut + "\n\n(cut here)" + more


def keyframe_key(comparison: Comparison) -> str:
    """The image key of a key-frame grid: its section (`comparison`) sorts first in MLflow's chart view."""
    return "comparison/" + re.sub(r"[^A-Za-z0-9_\-. ]", "_", f"{comparison.asset} seed {comparison.seed}")


# ----------------------------------------------------------------------------- the tasks


@task(name="read-cases", cache_policy=NONE, persist_result=False)
def read_cases(settings: Settings, experiment: str, parent_run_id: str) -> pd.DataFrame:
    """The evaluation's generation runs as a summary table (empty while they are spooled: they are
    summarised once synced)."""
    if RunWriter(settings, parent_run_id).spooled:
        return summary_table(pd.DataFrame())
    try:
        runs = search_runs(settings.tracking_uri, experiment, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    except Exception as error:
        if not unreachable(error):
            raise
        runs = pd.DataFrame()
    return summary_table(runs)


def experiment_of(writer: RunWriter) -> str | None:
    """The parent's experiment id, for links; None while the run is spooled or the server is away."""
    if writer.spooled:
        return None
    try:
        return writer.client.get_run(writer.run_id).info.experiment_id
    except Exception as error:
        if not unreachable(error):
            raise
        return None


@task(name="report-evaluation", cache_policy=NONE, persist_result=False)
def log_evaluation(
    settings: Settings,
    parent_run_id: str,
    suite: str,
    variants: list[str],
    table: pd.DataFrame,
    comparisons: list[Comparison],
    loads: dict[str, int],
    failed: int,
) -> str:
    """Everything on the parent run (module docstring), and the report in Prefect; returns the report."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    writer = RunWriter(settings, parent_run_id)
    links = Links(experiment_of(writer), parent_run_id)
    summary = summary_markdown(suite, table, variants, comparisons, links)
    report = evaluation_markdown(suite, table, variants, comparisons, loads, links)
    now = int(time.time() * 1000)
    values = parent_metrics(table, variants)
    values |= {f"pipeline_loads/{label}": count for label, count in loads.items()}
    values |= {"cases": len(table), "failed_cases": failed}
    writer.log_batch(
        metrics=[Metric(key, float(value), now, 0) for key, value in values.items()],
        tags={"mlflow.note.content": description(summary, links)},
    )
    for comparison in comparisons:
        writer.log_image(read_image(comparison.keyframes), key=keyframe_key(comparison), step=comparison.seed)
        writer.log_artifact(comparison.media, "comparison")
        writer.log_artifact(comparison.keyframes, "comparison")
    writer.log_table(table, "summary.json")
    writer.log_text(report, "report.md")
    writer.set_terminated("FAILED" if failed else "FINISHED")
    create_markdown_artifact(key="evaluation-report", markdown=report, description=f"evaluation {suite}")
    create_table_artifact(
        key="evaluation-summary", table=table.astype(object).where(table.notna(), None).to_dict("records")
    )
    return report
