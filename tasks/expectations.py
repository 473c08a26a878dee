"""Great Expectations suites (`configs/expectations/*.json`) run over in-memory tables.

GX 1.x with an ephemeral context: nothing is written to disk, and the result is a plain JSON dict
that is logged with the run. Its import costs seconds, so it happens here, on first use only.
"""

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cosmos_pipeline.settings import find_config

INDEX_COLUMN = "row"  # every table carries it, so a failure names the rows it concerns


@dataclass
class Failure:
    """One failed expectation: what it checks, the rows it failed on, and what to tell the user."""

    expectation: str
    column: str | None
    field: str
    message: str
    rows: list[int]
    detail: str | None  # a column of the table holding a per-row explanation


def load_suite(name: str) -> dict[str, Any]:
    import json

    return json.loads(find_config(f"expectations/{name}.json").read_text(encoding="utf-8"))


def run_suite(table: pd.DataFrame, suite: dict[str, Any], extra: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """Validate `table` against `suite` (plus `extra` expectations); the GX result as JSON."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # No "temporary directory for ephemeral docs site" line per context.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas(suite["name"])
        .add_dataframe_asset("table")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": table})
    )
    expectations = [*suite["expectations"], *extra]
    gx_suite = gx.ExpectationSuite(name=suite["name"], expectations=expectations)
    result = batch.validate(
        gx_suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [INDEX_COLUMN]}
    )
    return result.to_json_dict()


def failures(result: dict[str, Any]) -> list[Failure]:
    """The failed expectations of a GX result, with the rows (values of INDEX_COLUMN) they failed on."""
    found = []
    for item in result["results"]:
        if item["success"]:
            continue
        config = item["expectation_config"]
        kwargs, meta = config["kwargs"], config.get("meta") or {}
        column = kwargs.get("column") or kwargs.get("column_A")
        unexpected = item["result"].get("unexpected_index_list") or []
        found.append(
            Failure(
                expectation=config["type"],
                column=column,
                field=meta.get("field", column or "batch"),
                message=meta.get("message", config["type"]),
                rows=[int(entry[INDEX_COLUMN]) for entry in unexpected],
                detail=meta.get("detail"),
            )
        )
    return found
