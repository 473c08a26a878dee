"""Reading runs back: the summary table and its markdown, from `mlflow.search_runs`-shaped frames."""

import pandas as pd

from tasks.report import markdown_table, summary_table


def runs_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": ["p", "c2", "c1", "v"],
            "status": ["FINISHED"] * 3 + ["FAILED"],
            "tags.mode": ["evaluation", "text2world", "text2world", "validation"],
            "tags.asset": [None, "robot", "robot", None],
            "tags.variant": [None, "post-trained", "pre-trained", None],
            "tags.seed": [None, "0", "0", None],
            "metrics.time/total_s": [None, 2.0, 1.0, None],
            "metrics.output/flicker": [None, 0.5, 0.25, None],
        }
    )


def test_summary_keeps_generations_sorted_by_asset_seed_variant() -> None:
    table = summary_table(runs_frame())
    assert list(table["run_id"]) == ["c2", "c1"]  # post-trained < pre-trained; parent and validation dropped
    assert list(table.columns) == [
        "asset",
        "variant",
        "seed",
        "mode",
        "status",
        "total_s",
        "flicker",
        "run_id",
    ]


def test_markdown_table() -> None:
    text = markdown_table(summary_table(runs_frame()))
    lines = text.splitlines()
    assert lines[0].startswith("| asset | variant |") and lines[1].startswith("| --- |")
    assert "| robot | pre-trained | 0 | text2world | FINISHED | 1 | 0.25 | c1 |" in lines
