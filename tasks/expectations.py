"""Great Expectations suites (`configs/expectations/*.json`) run over in-memory tables, in a helper process.

GX 1.x with an ephemeral context: nothing is written to disk, and the result is a plain JSON dict that is
logged with the run. Importing GX costs ~5 s of CPU, so it happens once, in a helper process started the
first time a flow asks (`start`): it imports GX on another core while this process imports the model and
generates, and a long-lived process (a warm worker) keeps it warm. Callers get a `Future`.
"""

import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cosmos_pipeline.settings import find_config

INDEX_COLUMN = "row"  # every table carries it, so a failure names the rows it concerns

_POOL: ProcessPoolExecutor | None = None


@dataclass
class Failure:
    """One failed expectation: what it checks, the rows it failed on, and what to tell the user."""

    expectation: str
    column: str | None
    field: str
    message: str
    rows: list[int]


def _end_with(parent: int) -> None:
    """In the helper: end once the parent is gone. A parent killed outright (SIGKILL, the OOM killer) never
    calls `stop`, and the pool's queue, whose both ends the helper holds, would never tell it."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _import_gx(parent: int) -> None:
    # Ctrl-C and SIGTERM reach the helper with its process group; the parent decides when it stops (`stop`).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_end_with, args=(parent,), daemon=True).start()
    import great_expectations  # noqa: F401  (the slow part, done before the first table arrives)

    # No "temporary directory for ephemeral docs site" line per context.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)


def start() -> ProcessPoolExecutor:
    """The helper process, started now (and importing GX) if it is not running yet."""
    global _POOL
    if _POOL is None:
        context = multiprocessing.get_context("spawn")  # no fork of a process that runs threads
        _POOL = ProcessPoolExecutor(
            max_workers=1, mp_context=context, initializer=_import_gx, initargs=(os.getpid(),)
        )
        # Spawn imports the parent's `__main__` again in the child (`-m prefect.engine`, `-m tasks.warm`:
        # 2-4 s of CPU and, for a warm worker, torch); the helper needs none of it, so the child is started
        # (by this first, empty task) while `__main__` is a bare module.
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            _POOL.submit(int)
        finally:
            sys.modules["__main__"] = main
    return _POOL


def stop() -> None:
    """End the helper process, if one was started (a long-lived process on its way out)."""
    global _POOL
    if _POOL is not None:
        _POOL.shutdown(cancel_futures=True)
        _POOL = None


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
    """Suite `name` over `table` in the helper process; the future's result is the GX result as JSON."""
    return start().submit(validate, table, load_suite(name), list(extra))


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
