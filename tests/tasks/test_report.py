"""Reading runs back: the summary table, the per-variant figures and the verdict, from frames shaped like
`mlflow.search_runs`' (no MLflow store needed; the evaluate flow's tests read them back from one)."""

import numpy as np
import pandas as pd

from tasks.report import (
    Links,
    captions,
    description,
    markdown_table,
    parent_metrics,
    summary_table,
    verdict,
    winners,
)


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


def cases() -> pd.DataFrame:
    """Two modes x two variants x two seeds; post-trained flickers less in Text2World only."""
    rows = []
    for mode, asset in (("text2world", "warehouse"), ("image2world", "robot")):
        for seed in ("0", "1"):
            for variant, flicker in (
                ("pre-trained", 0.4),
                ("post-trained", 0.2 if mode == "text2world" else 0.4),
            ):
                rows.append(
                    {"asset": asset, "variant": variant, "seed": seed, "mode": mode, "status": "FINISHED",
                     "flicker": flicker + int(seed) * 0.1, "total_s": 2.0 if mode == "text2world" else 10.0,
                     "sharpness": 5.0, "run_id": f"{asset}-{variant}-{seed}"}
                )  # fmt: skip
    rows.append({**rows[0], "status": "FAILED", "flicker": 100.0, "run_id": "failed"})
    return pd.DataFrame(rows)


def test_summary_keeps_generations_sorted_by_asset_seed_variant() -> None:
    table = summary_table(runs_frame())
    assert list(table["run_id"]) == ["c2", "c1"]  # post-trained < pre-trained; parent and validation dropped
    assert list(table.columns) == [
        "asset",
        "variant",
        "seed",
        "mode",
        "status",
        "flicker",
        "total_s",
        "run_id",
    ]


def test_markdown_table() -> None:
    lines = markdown_table(summary_table(runs_frame())).splitlines()
    assert lines[0].startswith("| asset | variant |") and lines[1].startswith("| --- |")
    assert "| robot | pre-trained | 0 | text2world | FINISHED | 0.25 | 1 | c1 |" in lines


def test_parent_metrics_are_means_per_mode_and_differences_from_the_baseline() -> None:
    metrics = parent_metrics(cases(), ["pre-trained", "post-trained"])
    assert np.isclose(metrics["text2world/flicker/pre-trained"], 0.45)  # the FAILED case is left out
    assert np.isclose(metrics["text2world/flicker/post-trained"], 0.25)
    assert np.isclose(metrics["text2world/flicker/post-trained - pre-trained"], -0.2)
    assert np.isclose(metrics["image2world/flicker/post-trained - pre-trained"], 0.0)
    assert (
        metrics["image2world/total_s/pre-trained"] == 10.0
        and metrics["text2world/total_s/pre-trained"] == 2.0
    )
    assert "text2world/flicker/pre-trained - pre-trained" not in metrics
    assert not [key for key in metrics if key.count("/") != 2]


def test_winners_state_the_direction_and_call_ties() -> None:
    table = winners(cases(), ["pre-trained", "post-trained"])
    assert list(table.columns) == [
        "mode", "figure", "better", "pre-trained", "post-trained", "post-trained - pre-trained", "winner"
    ]  # fmt: skip
    rows = {(row["mode"], row["figure"]): row for row in table.to_dict("records")}
    assert rows["text2world", "flicker"]["better"] == "lower"
    assert rows["text2world", "flicker"]["winner"] == "**post-trained**"
    assert rows["text2world", "flicker"]["post-trained - pre-trained"] == "-0.2"
    assert rows["image2world", "flicker"]["winner"] == "tie"
    assert ("text2world", "sharpness") not in rows  # no direction: shown in the wide table, never ranked


def test_verdict_names_what_each_variant_wins_and_loses_per_mode() -> None:
    text = verdict(cases(), ["pre-trained", "post-trained"])
    assert text.startswith("**post-trained** vs **pre-trained** (baseline): text2world: better on flicker;")
    assert "image2world: better on nothing; worse on nothing; equal on 2 figure(s)" in text


def test_captions_mark_the_best_variant_of_each_case() -> None:
    labels = captions(cases())
    assert labels["warehouse-post-trained-0"] == ("flicker 0.2 (lower is better) · best",
                                                   "total_s 2 (lower is better)")  # fmt: skip
    assert labels["warehouse-pre-trained-0"][0] == "flicker 0.4 (lower is better)"


def test_links_go_to_the_ui_or_are_plain_text_while_spooled() -> None:
    links = Links("7", "parent")
    assert links.run("run", "abc") == "[run](#/experiments/7/runs/abc)"
    assert (
        links.artifact("video", "comparison/a.mp4")
        == "[video](#/experiments/7/runs/parent/artifacts/comparison/a.mp4)"
    )
    assert Links(None, "spool-1").run("run", "abc") == "run"
    assert description("x\n" * 4000, links).endswith(
        "[report.md](#/experiments/7/runs/parent/artifacts/report.md)"
    )
    assert len(description("x\n" * 4000, links)) <= 5000
