"""Validate a whole batch before any GPU time: each row as a typed request, then the batch as a table.

Per row: the pydantic request (types, 4k+1 frames, multiples of 16...) and the policy (paths, sizes).
Over the batch: the Great Expectations suite `configs/expectations/requests.json` (prompt length,
frame counts, sizes, guidance and step ranges, seeds, duplicate names and outputs, media present
and decodable, outputs writable). Every problem of every row is reported together, by row and field.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from cosmos_pipeline.bundle import Problem, Row
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.media import check_media, check_output_path, read_video
from cosmos_pipeline.policy import Policy, check_media_size, check_paths, check_sizes
from cosmos_pipeline.request import GenerationRequest
from tasks.expectations import INDEX_COLUMN, failures, load_suite, run_suite

REQUESTS_SUITE = "requests"
# Table columns that hold a request field's own value (the others are derived: probes, identity).
FIELD_COLUMNS = frozenset(
    {"name", "num_frames", "height", "width", "guidance_scale", "num_inference_steps", "seed", "output_path"}
)


@dataclass
class ValidationReport:
    """The outcome of validating one batch: its problems by row and field, and the GX result."""

    rows: int
    problems: list[Problem] = field(default_factory=list)
    expectations: dict[str, Any] | None = None  # the GX validation result (JSON)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def failed_rows(self) -> list[int]:
        return sorted({problem.row for problem in self.problems})

    def summary(self) -> str:
        if self.ok:
            return f"all {self.rows} request(s) valid"
        lines = [f"{len(self.failed_rows)} of {self.rows} request(s) invalid:"]
        lines += [
            f"  row {p.row}{f' ({p.name})' if p.name else ''}: `{p.field}`: {p.message}"
            for p in self.problems
        ]
        return "\n".join(lines)

    def markdown(self) -> str:
        if self.ok:
            return f"# Validation passed\n\nAll {self.rows} request(s) passed the request suite.\n"
        lines = [
            "# Validation failed",
            "",
            f"{len(self.failed_rows)} of {self.rows} request(s) invalid; nothing was generated.",
            "",
            "| row | name | field | problem |",
            "| --- | --- | --- | --- |",
        ]
        for p in self.problems:
            message = p.message.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {p.row} | {p.name or ''} | `{p.field}` | {message} |")
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "ok": self.ok,
            "problems": [asdict(problem) for problem in self.problems],
            "expectations": self.expectations,
        }


class BatchValidationError(InputError):
    """A batch failed validation; `report` names every failing row and field."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary())
        self.report = report


def _media_columns(request: GenerationRequest, policy: Policy) -> dict[str, Any]:
    """Whether the input is there and decodes, and how many frames a video has (up to what is needed)."""
    if request.input_path is None:
        return {"media_present": None, "media_decodable": None, "media_frames": None, "media_problem": None}
    present = request.input_path.is_file()
    columns = {"media_present": present, "media_decodable": None, "media_frames": None, "media_problem": None}
    if not present:
        columns["media_problem"] = f"{request.input_path} does not exist or is not a file"
        return columns
    try:
        check_media_size(request.input_path, policy)  # from the header: a bomb is never decoded
        kind = check_media(request.input_path)
        columns["media_decodable"] = True
        if kind == "video":
            frames = read_video(request.input_path, max_frames=request.conditioning_frames)
            columns["media_frames"] = frames.shape[0]
    except InputError as error:
        columns["media_decodable"] = False
        columns["media_problem"] = str(error)
    return columns


def _output_columns(request: GenerationRequest) -> dict[str, Any]:
    assert request.output_path is not None
    try:
        check_output_path(request.output_path, request.num_frames, request.overwrite)
    except InputError as error:
        return {"output_available": False, "output_problem": str(error)}
    return {"output_available": True, "output_problem": None}


def request_table(rows: list[Row], policy: Policy) -> pd.DataFrame:
    """One line per typed request: the values the suite checks, plus media and output probes."""
    lines = []
    for row in rows:
        request = row.request
        assert request is not None
        lines.append(
            {
                INDEX_COLUMN: row.index,
                "name": request.name,
                # Name, variant and a given seed: an evaluation repeats names across variants and seeds.
                "identity": f"{request.name}|{request.model_id}@{request.revision}+{request.lora_path}|"
                f"{'drawn' if request.seed_chosen else request.seed}",
                "prompt_length": len(request.prompt),
                "num_frames": request.num_frames,
                "height": request.height,
                "width": request.width,
                "guidance_scale": request.guidance_scale,
                "num_inference_steps": request.num_inference_steps,
                "seed": request.seed,
                "output_path": str(request.output_path),
                "input_path": None if request.input_path is None else str(request.input_path),
                "conditioning_frames": request.conditioning_frames if request.source == "video" else None,
                **_media_columns(request, policy),
                **_output_columns(request),
            }
        )
    return pd.DataFrame(lines)


def _plain(value: Any) -> Any:
    """numpy scalars as Python values, so messages read `50.0`, not `np.float64(50.0)`."""
    return value.item() if hasattr(value, "item") else value


def validate_rows(rows: list[Row], policy: Policy) -> ValidationReport:
    """Every problem of every row: request fields, the policy, then the batch suite."""
    report = ValidationReport(rows=len(rows))
    typed = []
    for row in rows:
        report.problems += row.problems
        if row.request is None:
            continue
        try:  # before anything is read: a path or a size may be hostile
            check_paths(row.request, policy)
            check_sizes(row.request, policy)
        except InputError as error:
            report.problems.append(Problem(row.index, row.request.name, "policy", str(error)))
            continue
        typed.append(row)
    if typed:
        table = request_table(typed, policy)
        report.expectations = run_suite(table, load_suite(REQUESTS_SUITE))
        by_row = table.set_index(INDEX_COLUMN)
        for failure in failures(report.expectations):
            if not failure.rows:  # a table-level expectation
                report.problems.append(Problem(0, None, failure.field, failure.message))
            # Show the offending value: of the checked column, or of the field for derived columns.
            shown = failure.column if failure.column in FIELD_COLUMNS else failure.field
            for index in failure.rows:
                message = failure.message
                if failure.detail and by_row.at[index, failure.detail]:
                    message += f": {by_row.at[index, failure.detail]}"
                elif shown in by_row:
                    message += f" (got {_plain(by_row.at[index, shown])!r})"
                report.problems.append(Problem(index, by_row.at[index, "name"], failure.field, message))
    report.problems.sort(key=lambda problem: (problem.row, problem.field))
    return report


@task(name="validate-requests", cache_policy=NONE, persist_result=False)
def validate_requests(rows: list[Row], policy: Policy) -> tuple[list[GenerationRequest], ValidationReport]:
    """The batch's requests, or BatchValidationError naming every failing row and field.

    The report is a Prefect artifact either way; on failure nothing downstream runs.
    """
    logger = get_run_logger()
    report = validate_rows(rows, policy)
    create_markdown_artifact(
        key="request-validation", markdown=report.markdown(), description=report.summary().splitlines()[0]
    )
    if not report.ok:
        logger.error("%s", report.summary())
        raise BatchValidationError(report)
    logger.info("%s", report.summary())
    return [row.request for row in rows if row.request is not None], report


def write_report(report: ValidationReport, directory: Path) -> list[Path]:
    """The report as `validation.md` and `validation.json` in `directory` (to log as artifacts)."""
    directory.mkdir(parents=True, exist_ok=True)
    markdown, data = directory / "validation.md", directory / "validation.json"
    markdown.write_text(report.markdown(), encoding="utf-8")
    data.write_text(json.dumps(report.as_json(), indent=2, default=str), encoding="utf-8")
    return [markdown, data]
