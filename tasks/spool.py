"""Tracking that never loses a run: MLflow writes go to the server, or to a local spool while it is away.

Every write of a run goes through a `RunWriter`. While the tracking server answers, writes are live.
When it does not (connection refused, timeouts, 5xx after a short bounded retry), the run's writes
from then on are appended to a journal on local disk, with its artifacts, tables and images copied
beside it, and the generation carries on. `sync_spool` (the `cosmos-sync` command, and the start of
every flow run) replays finished journals against the server and removes them.

Layout: `<spool_dir>/<run id>/journal.jsonl` (one write per line, in order), `files/` (what was
logged), `progress.json` (how far a sync got: an interrupted sync resumes without a second run).
A run spooled from its start has a local id `spool-<hex>` until it is synced; a run whose server
went away mid-way keeps its id and its journal starts with `attach`. `ids.json` maps synced local
ids to server ids, so a child spooled under a spooled parent finds its parent, and sidecars that
recorded a local id are rewritten.
"""

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from PIL import Image
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from cosmos_pipeline.settings import Settings
from cosmos_pipeline.sidecar import sidecar_path
from cosmos_pipeline.storage import URI, cache_root
from tasks.scrub import scrub, scrub_mapping, scrub_value

logger = logging.getLogger(__name__)

SPOOL_PREFIX = "spool-"
JOURNAL, PROGRESS, IDS = "journal.jsonl", "progress.json", "ids.json"
# MLflow's own HTTP defaults retry 7 times with a doubling backoff: minutes per call against a dead
# server. A few seconds, then the spool. An operator's MLFLOW_HTTP_REQUEST_* environment wins.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
PROBE_TIMEOUT_S = 3.0


def mlflow_client(settings: Settings) -> MlflowClient:
    """A client of the settings' store. Opening a new SQLite store creates and migrates its tables, which
    MLflow does not guard: two processes doing it at once break each other (tables "already exist",
    migrations find no row). So the first opening of a SQLite store holds a lock beside the database."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = settings.tracking_uri
    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or its process dies
        return MlflowClient(tracking_uri=uri)


def experiment_id(client: MlflowClient, name: str, settings: Settings) -> str:
    """The experiment's id, created on first use; a local store keeps its artifacts under artifact_root."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    local = settings.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in settings.tracking_uri
    location = (settings.artifact_root.resolve() / name).as_uri() if local else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a concurrent run
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def spool_root(settings: Settings) -> Path:
    """Beside the outputs, or in this host's cache when they go to an object store (journals stay local)."""
    if settings.spool_dir is not None:
        return settings.spool_dir
    if isinstance(settings.output_dir, URI):
        return cache_root() / "mlflow-spool"
    return settings.output_dir / ".mlflow-spool"


def unreachable(error: BaseException) -> bool:
    """Whether `error` (or its cause) says the tracking server is away, not that the write is wrong."""
    import requests

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ConnectionError | TimeoutError | requests.ConnectionError | requests.Timeout):
            return True
        if isinstance(seen, requests.exceptions.RetryError):
            return True
        if (
            isinstance(seen, requests.HTTPError)
            and seen.response is not None
            and seen.response.status_code >= 500
        ):
            return True
        if isinstance(seen, MlflowException) and "failed with exception" in str(seen):
            return True  # MLflow's REST client wraps connection and retry errors this way
        seen = seen.__cause__ or seen.__context__
    return False


def server_reachable(settings: Settings) -> bool:
    """An HTTP tracking server answers `/health` (two tries, PROBE_TIMEOUT_S each); other stores: True."""
    import requests

    uri = settings.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return True
    for _ in range(2):
        try:
            if requests.get(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).ok:
                return True
        except requests.RequestException:
            pass
    return False


def now_ms() -> int:
    return int(time.time() * 1000)


# ----------------------------------------------------------------------------- the journal


class Journal:
    """One spooled run: its ordered writes and the files they logged."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.run_id = folder.name

    @classmethod
    def find(cls, settings: Settings, run_id: str) -> "Journal | None":
        folder = spool_root(settings) / run_id
        return cls(folder) if (folder / JOURNAL).is_file() else None

    @classmethod
    def start(cls, settings: Settings, run_id: str, first: dict[str, Any]) -> "Journal":
        folder = spool_root(settings) / run_id
        (folder / "files").mkdir(parents=True, exist_ok=True)
        journal = cls(folder)
        if not (folder / JOURNAL).exists():
            journal.append({**first, "tracking_uri": scrub(settings.tracking_uri)})
        return journal

    def append(self, op: dict[str, Any]) -> None:
        with open(self.folder / JOURNAL, "a", encoding="utf-8") as file:
            file.write(json.dumps(op, default=str) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def new_file(self, name: str) -> Path:
        """A fresh place for a logged file, named as MLflow will name it."""
        folder = self.folder / "files" / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        return folder / name

    def ops(self) -> list[dict[str, Any]]:
        lines = (self.folder / JOURNAL).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


# ----------------------------------------------------------------------------- writing a run


def log_batch(client: MlflowClient, run_id: str, params=None, metrics=None, tags=None) -> None:
    """log_batch in chunks within MLflow's per-call limits (100 params or tags, 1000 metrics)."""
    params = [Param(key, value) for key, value in (params or {}).items()]
    tags = [RunTag(key, value) for key, value in (tags or {}).items()]
    metrics = metrics or []
    for start in range(0, max(len(params), len(tags), 1), 100):
        client.log_batch(run_id, params=params[start : start + 100], tags=tags[start : start + 100])
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def create_run(settings: Settings, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """A RUNNING run on the server, or a spooled one (local id) when the server is away."""
    tags = scrub_mapping(tags)
    if server_reachable(settings):
        client = mlflow_client(settings)
        try:
            run = client.create_run(experiment_id(client, experiment, settings), run_name=run_name, tags=tags)
            return run.info.run_id
        except Exception as error:
            if not unreachable(error):
                raise
    run_id = f"{SPOOL_PREFIX}{uuid.uuid4().hex}"
    first = {
        "op": "create",
        "experiment": experiment,
        "run_name": run_name,
        "tags": tags,
        "start_time": now_ms(),
    }
    Journal.start(settings, run_id, first)
    logger.warning(
        "tracking server %s unreachable: run %s is spooled in %s; `cosmos-sync` uploads it",
        scrub(settings.tracking_uri), run_id, spool_root(settings),
    )  # fmt: skip
    return run_id


class RunWriter:
    """The writes of one run: live while the server answers, spooled from the first write it does not.

    Methods are MlflowClient's, without the run id. What is written is scrubbed of secrets first
    (`tasks.scrub`); files logged as they are (outputs, sidecars, input media) are the caller's to keep clean.
    """

    def __init__(self, settings: Settings, run_id: str) -> None:
        self.settings, self.run_id = settings, run_id
        self.journal = Journal.find(settings, run_id)
        self._client: MlflowClient | None = None

    @property
    def spooled(self) -> bool:
        return self.journal is not None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = mlflow_client(self.settings)
        return self._client

    def _write(self, live: Callable[[MlflowClient], None], spool: Callable[[Journal], None]) -> None:
        if self.journal is None:
            try:
                live(self.client)
                return
            except Exception as error:
                if not unreachable(error):
                    raise
                logger.warning(
                    "tracking server %s went away (%s): the rest of run %s is spooled in %s",
                    scrub(self.settings.tracking_uri), type(error).__name__, self.run_id,
                    spool_root(self.settings),
                )  # fmt: skip
                self.journal = Journal.start(
                    self.settings, self.run_id, {"op": "attach", "run_id": self.run_id}
                )
        spool(self.journal)

    def log_batch(self, params=None, metrics: list[Metric] | None = None, tags=None) -> None:
        params, tags = scrub_mapping(params or {}), scrub_mapping(tags or {})
        metrics = metrics or []
        self._write(
            lambda client: log_batch(client, self.run_id, params, metrics, tags),
            lambda journal: journal.append(
                {
                    "op": "log",
                    "params": params,
                    "tags": tags,
                    "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
                }
            ),
        )

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        def spool(journal: Journal) -> None:
            copy = journal.new_file(Path(path).name)
            shutil.copy2(path, copy)
            journal.append(
                {"op": "artifact", "file": str(copy.relative_to(journal.folder)), "path": artifact_path}
            )

        self._write(lambda client: client.log_artifact(self.run_id, str(path), artifact_path), spool)

    def log_text(self, text: str, artifact_file: str) -> None:
        """A text artifact (scrubbed), written through a temporary file either way."""
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / Path(artifact_file).name
            path.write_text(scrub(text), encoding="utf-8")
            self.log_artifact(path, str(Path(artifact_file).parent) if "/" in artifact_file else None)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self.log_text(json.dumps(scrub_value(data), indent=2, default=str), artifact_file)

    def log_table(self, frame: pd.DataFrame, artifact_file: str) -> None:
        def spool(journal: Journal) -> None:
            copy = journal.new_file(Path(artifact_file).name)
            frame.to_json(copy, orient="split", index=False)
            journal.append(
                {"op": "table", "file": str(copy.relative_to(journal.folder)), "artifact_file": artifact_file}
            )

        self._write(lambda client: client.log_table(self.run_id, frame, artifact_file), spool)

    def log_image(self, frame: np.ndarray, key: str, step: int) -> None:
        timestamp = now_ms()

        def spool(journal: Journal) -> None:
            copy = journal.new_file(f"{key}-{step}.png")
            Image.fromarray(frame).save(copy)
            journal.append(
                {"op": "image", "file": str(copy.relative_to(journal.folder)), "key": key, "step": step,
                 "timestamp": timestamp}
            )  # fmt: skip

        self._write(
            lambda client: client.log_image(self.run_id, frame, key=key, step=step, timestamp=timestamp),
            spool,
        )

    def set_terminated(self, status: str) -> None:
        end = now_ms()
        self._write(
            lambda client: client.set_terminated(self.run_id, status, end),
            lambda journal: journal.append({"op": "terminate", "status": status, "end_time": end}),
        )


# ----------------------------------------------------------------------------- syncing


@dataclass
class SyncReport:
    uploaded: dict[str, str] = field(default_factory=dict)  # spooled id -> server id
    waiting: list[str] = field(default_factory=list)  # unfinished, or under a parent not synced yet
    failed: dict[str, str] = field(default_factory=dict)  # spooled id -> why

    def summary(self) -> str:
        parts = [f"{len(self.uploaded)} run(s) uploaded"]
        if self.waiting:
            parts.append(f"{len(self.waiting)} waiting (unfinished or under an unsynced parent)")
        if self.failed:
            parts.append(
                f"{len(self.failed)} failed: " + "; ".join(f"{k}: {v}" for k, v in self.failed.items())
            )
        return ", ".join(parts)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on a spooled run, released if its holder dies."""
    with open(folder / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _mapped(values: dict[str, str], ids: dict[str, str]) -> dict[str, str]:
    return {key: ids.get(value, value) for key, value in values.items()}


def _fix_sidecar_copy(path: Path, local: str, real: str) -> None:
    """A spooled sidecar that recorded the local run id records the server's id instead."""
    if path.suffix != ".json" or local == real:
        return
    data = _read_json(path, None)
    if isinstance(data, dict) and data.get("mlflow_run_id") == local:
        _write_json(path, {**data, "mlflow_run_id": real})


def _replay(client: MlflowClient, settings: Settings, journal: Journal, ids: dict[str, str]) -> str:
    """Apply the journal's writes not applied yet; returns the server's run id."""
    progress = _read_json(journal.folder / PROGRESS, {"run_id": None, "done": 0})
    run_id = progress["run_id"]
    for index, op in enumerate(journal.ops()):
        if index < progress["done"]:
            continue
        kind = op["op"]
        if kind == "create":
            experiment = experiment_id(client, op["experiment"], settings)
            run_id = client.create_run(
                experiment,
                start_time=op["start_time"],
                tags=_mapped(op["tags"], ids),
                run_name=op["run_name"],
            ).info.run_id
        elif kind == "attach":
            run_id = op["run_id"]
        elif kind == "log":
            metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in op["metrics"]]
            log_batch(client, run_id, op["params"], metrics, _mapped(op["tags"], ids))
        elif kind == "artifact":
            path = journal.folder / op["file"]
            _fix_sidecar_copy(path, journal.run_id, run_id)
            client.log_artifact(run_id, str(path), op["path"])
        elif kind == "table":
            frame = pd.read_json(journal.folder / op["file"], orient="split")
            client.log_table(run_id, frame, op["artifact_file"])
        elif kind == "image":
            frame = np.asarray(Image.open(journal.folder / op["file"]).convert("RGB"))
            client.log_image(run_id, frame, key=op["key"], step=op["step"], timestamp=op["timestamp"])
        elif kind == "terminate":
            client.set_terminated(run_id, op["status"], op["end_time"])
        else:
            raise ValueError(f"unknown spool operation {kind!r} in {journal.folder / JOURNAL}")
        _write_json(journal.folder / PROGRESS, {"run_id": run_id, "done": index + 1})
    return run_id


def _fix_output_sidecar(ops: list[dict[str, Any]], local: str, real: str) -> None:
    """The sidecar beside the output, if it recorded the local id (the output outlives the spool)."""
    for op in ops:  # the tag is set when the run is created, or logged later
        output = op.get("tags", {}).get("output_path") if op["op"] in ("create", "log") else None
        if output:
            _fix_sidecar_copy(sidecar_path(Path(output)), local, real)


def sync_spool(settings: Settings, include_unfinished: bool = False) -> SyncReport:
    """Upload every finished spooled run to `settings.tracking_uri` and remove it from the spool.

    Unfinished runs (their generation still going, or its process gone) wait, unless
    `include_unfinished`: then they are uploaded and marked KILLED. A run spooled under a spooled
    parent waits for its parent. Safe to run concurrently and to interrupt: a run is locked while it
    syncs, and a later sync resumes it where it stopped.
    """
    root, report = spool_root(settings), SyncReport()
    pending = (
        sorted(root.glob(f"*/{JOURNAL}"), key=lambda path: path.stat().st_mtime) if root.is_dir() else []
    )
    if not pending:
        return report
    if not server_reachable(settings):
        report.waiting = [path.parent.name for path in pending]
        return report
    client = mlflow_client(settings)
    ids: dict[str, str] = _read_json(root / IDS, {})
    folders = [path.parent for path in pending]
    while folders:  # parents (evaluations) finish after their children: sync in rounds
        later = [folder for folder in folders if _sync_one(client, settings, Journal(folder), ids, report,
                                                           include_unfinished) == "parent"]  # fmt: skip
        if len(later) == len(folders) or unreachable_seen(report):
            report.waiting += [folder.name for folder in later]
            break
        folders = later
    return report


def unreachable_seen(report: SyncReport) -> bool:
    return any(reason.startswith("unreachable") for reason in report.failed.values())


def _sync_one(
    client: MlflowClient,
    settings: Settings,
    journal: Journal,
    ids: dict[str, str],
    report: SyncReport,
    include_unfinished: bool,
) -> str:
    """Sync one spooled run; returns what happened: uploaded, waiting, parent (its parent first), failed."""
    with _locked(journal.folder) as mine:
        ops = journal.ops() if mine else []
        finished = any(op["op"] == "terminate" for op in ops)
        if not mine or (not finished and not include_unfinished):
            report.waiting.append(journal.run_id)
            return "waiting"
        parents = {
            str(v) for op in ops for v in op.get("tags", {}).values() if str(v).startswith(SPOOL_PREFIX)
        }
        if not parents <= set(ids):
            return "parent"
        try:
            run_id = _replay(client, settings, journal, ids)
            if not finished:
                client.set_terminated(run_id, "KILLED")
        except Exception as error:
            why = "unreachable" if unreachable(error) else "error"
            report.failed[journal.run_id] = f"{why}: {type(error).__name__}: {scrub(str(error))[:300]}"
            return "failed"
        _fix_output_sidecar(ops, journal.run_id, run_id)
        if journal.run_id != run_id:
            ids[journal.run_id] = run_id
            _write_json(spool_root(settings) / IDS, ids)
        report.uploaded[journal.run_id] = run_id
    shutil.rmtree(journal.folder, ignore_errors=True)
    return "uploaded"


@task(name="sync-tracking-spool", cache_policy=NONE, persist_result=False)
def sync_tracking_spool(settings: Settings) -> None:
    """Upload runs spooled while the tracking server was away, before new work; a problem here is logged,
    never fatal (`cosmos-sync` reports it in full)."""
    logger = get_run_logger()
    try:
        report = sync_spool(settings)
    except Exception as error:
        logger.warning("tracking spool not synced: %s: %s", type(error).__name__, scrub(str(error)))
        return
    if report.uploaded or report.failed:
        logger.info("tracking spool: %s", report.summary())
