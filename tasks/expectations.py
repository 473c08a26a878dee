"""Great Expectations suites (`configs/expectations/*.json`) over in-memory tables, in GX's shared process.

GX 1.x with an ephemeral context: nothing is written to disk, and the result is a plain JSON dict that is
logged with the run. Importing GX costs ~5 s of CPU, so it happens once per host and code, in the process
that `tasks.gx_process` shares between every command, flow run and warm worker there; callers get a
`Future` and go on meanwhile.
"""

import json
import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cosmos_pipeline.settings import find_config
from tasks import gx_process

INDEX_COLUMN = "row"  # every table carries it, so a failure names the rows it concerns


@dataclass
class Failure:
    """One failed expectation: what it checks, the rows it failed on, and what to tell the user."""

    expectation: str
    column: str | None
    field: str
    message: str
    rows: list[int]


def import_gx() -> None:
    """The slow part (~5 s of CPU), done by the shared process before its first table arrives."""
    import great_expectations  # noqa: F401

    # No "temporary directory for ephemeral docs site" line per context.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)


def load_suite(name: str) -> dict[str, Any]:
    return json.loads(find_config(f"expectations/{name}.json").read_text(encoding="utf-8"))


def validate(table: pd.DataFrame, suite: dict[str, Any], extra: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """Validate `table` against `suite` (plus `extra` expectations); the GX result as JSON. Runs anywhere."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

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


def run_suite(table: pd.DataFrame, name: str, extra: list[dict[str, Any]] = ()) -> "Future[dict[str, Any]]":
    """Suite `name` over `table` in GX's shared process; the future's result is the GX result as JSON."""
    return gx_process.submit("validate", table, load_suite(name), list(extra))


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
            )
        )
    return found
