"""`cosmos-compare`: the evaluation summary table for any MLflow experiment, from `mlflow.search_runs`.

    cosmos-compare --experiment cosmos-evaluate [--parent_run_id ID] [--format markdown|csv]

The same table the evaluate flow logs (`summary.json`, report.md): asset, variant, seed, mode,
status, timings and output metrics, one line per generation run.
"""

import argparse
import sys
from collections.abc import Sequence

from cosmos_pipeline.errors import InputError
from cosmos_pipeline.settings import load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cosmos-compare", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", help="MLflow experiment (default: the settings' eval_experiment)")
    parser.add_argument("--parent_run_id", "--parent-run-id", help="only the cases of this evaluation run")
    parser.add_argument("--tracking_uri", "--tracking-uri", help="MLflow store (default: the settings')")
    parser.add_argument("--profile", help="settings profile (configs/<profile>.toml)")
    parser.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.profile, tracking_uri=args.tracking_uri)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from tasks.report import markdown_table, search_runs, summary_table
    from tasks.track import PARENT_TAG

    experiment = args.experiment or settings.eval_experiment
    where = f"tags.`{PARENT_TAG}` = '{args.parent_run_id}'" if args.parent_run_id else ""
    try:
        runs = search_runs(settings.tracking_uri, experiment, where)
    except Exception as error:  # MLflow's message names the store or experiment that is wrong
        print(
            f"error: cannot read experiment {experiment!r} at {settings.tracking_uri}: {error}",
            file=sys.stderr,
        )
        return 2
    table = summary_table(runs)
    if table.empty:
        print(f"no generation runs in experiment {experiment!r} at {settings.tracking_uri}", file=sys.stderr)
        return 1
    print(table.to_csv(index=False) if args.format == "csv" else markdown_table(table), end="")
    return 0


def main() -> None:
    sys.exit(run())
