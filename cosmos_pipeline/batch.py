"""The one check of a batch before any GPU time: every problem of every row, by row and field.

The command line, the generate flow and the evaluate flow all call `check_batch` and report its result
the same way (`BatchReport.summary`). Per row: the request's own fields (`Row.problems`, from
`cosmos_pipeline.bundle`), then the policy on paths (a path outside the allowed folders is never opened)
and sizes, then the files: input media present, within the size limits (from the header), decodable to
the frames the request conditions on; output writable and not already there. Over the batch: two rows
that would write the same output. With `skip_existing`, a row whose output exists for the same request
key is reused rather than refused.
"""

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cosmos_pipeline.bundle import SEED_NAMES, Problem, Row, already_done
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.media import check_media, check_output_path, read_video
from cosmos_pipeline.policy import Policy, check_media_size, check_paths, check_sizes
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.storage import is_file, local

# Problems are reported under the names people type (flags and bundle keys), not the pipeline's.
SHOWN_NAMES = {field_name: seed_name for seed_name, field_name in SEED_NAMES.items()}


class BatchValidationError(InputError):
    """Rows of a batch are invalid; `report` names every problem of every row."""

    def __init__(self, report: "BatchReport") -> None:
        super().__init__(report.summary())
        self.report = report


@dataclass
class BatchReport:
    """What a batch asks for: requests to generate, requests whose output exists, and every problem."""

    rows: int
    requests: list[GenerationRequest] = field(default_factory=list)
    reused: list[GenerationRequest] = field(default_factory=list)  # output there for the same request
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def failed_rows(self) -> list[int]:
        return sorted({problem.row for problem in self.problems})

    def summary(self) -> str:
        if self.ok:
            reused = f"; {len(self.reused)} already have their output" if self.reused else ""
            return f"all {self.rows} request(s) valid{reused}"
        if self.rows == 1:  # one request: one line, as a command-line error reads
            return "; ".join(f"`{p.field}`: {p.message}" for p in self.problems)
        lines = [f"{len(self.failed_rows)} of {self.rows} request(s) invalid:"]
        for p in self.problems:
            lines.append(f"  row {p.row}{f' ({p.name})' if p.name else ''}: `{p.field}`: {p.message}")
        return "\n".join(lines)

    def markdown(self) -> str:
        if self.ok:
            return f"# Validation passed\n\nAll {self.rows} request(s) are valid.\n"
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
            "requests": len(self.requests),
            "reused": [str(request.output_path) for request in self.reused],
            "problems": [asdict(problem) for problem in self.problems],
        }

    def dumps(self) -> str:
        return json.dumps(self.as_json(), indent=2, default=str)


def shown(field_name: str) -> str:
    return SHOWN_NAMES.get(field_name, field_name)


def media_problem(request: GenerationRequest, policy: Policy) -> str | None:
    """Why the request's input media cannot condition it, or None: size (a URI's before it is fetched),
    the header, then decoding. A URI's problems name the URI, not this host's cached copy."""
    path = request.input_path
    assert path is not None
    if not is_file(path):
        return f"input media {path} does not exist or is not a file"
    copy = None
    try:
        check_media_size(path, policy)  # from the header: a decompression bomb is never decoded
        copy = local(path, policy.max_media_bytes)
        if check_media(copy, size=(request.height, request.width)) == "video":
            frames = read_video(copy, max_frames=request.conditioning_frames).shape[0]
            if frames < request.conditioning_frames:
                return (
                    f"input video {path} has {frames} frame(s) but Video2World with "
                    f"{request.num_latent_conditional_frames} conditional latent frame(s) needs at least "
                    f"{request.conditioning_frames}; use a longer video or num_latent_conditional_frames=1"
                )
    except InputError as error:
        return str(error) if copy is None else str(error).replace(str(copy), str(path))
    return None


def request_problems(request: GenerationRequest, policy: Policy) -> list[tuple[str, str]]:
    """(field, message) for everything wrong with one typed request; paths are checked before any read."""
    try:
        check_paths(request, policy)
    except InputError as error:
        return [("policy", str(error))]  # outside the allowed folders: nothing there is opened
    problems = []
    try:
        check_sizes(request, policy)
    except InputError as error:
        problems.append(("policy", str(error)))
    if request.input_path is not None and (problem := media_problem(request, policy)) is not None:
        problems.append(("input_path", problem))
    assert request.output_path is not None
    try:
        check_output_path(request.output_path, request.num_frames, request.overwrite)
    except InputError as error:
        problems.append(("output_path", str(error)))
    return problems


def check_batch(rows: Iterable[Row], policy: Policy, skip_existing: bool = False) -> BatchReport:
    """Every row checked; the report's `requests` are those to generate when it is `ok`."""
    rows = list(rows)
    report = BatchReport(rows=len(rows))
    writers: dict[str, list[tuple[int, str | None]]] = {}  # output -> the valid rows that write it
    for row in rows:
        report.problems += [Problem(p.row, p.name, shown(p.field), p.message) for p in row.problems]
        request = row.request
        if request is None or row.problems:  # already refused: its files are not looked at
            continue
        try:
            check_paths(request, policy)  # the sidecar is read only where the request may read
            reuse = skip_existing and not request.overwrite and already_done(request)
        except InputError:
            reuse = False
        if reuse:
            report.reused.append(request)
            continue
        found = request_problems(request, policy)
        report.problems += [Problem(row.index, request.name, name, message) for name, message in found]
        if not found:
            report.requests.append(request)
            writers.setdefault(str(request.output_path), []).append((row.index, request.name))
    for output, writing in writers.items():
        if len(writing) > 1:
            indices = [index for index, _ in writing]
            message = f"rows {indices} would all write {output}; give each its own `name`"
            report.problems += [Problem(index, name, "output_path", message) for index, name in writing]
    if not report.ok:
        report.requests = []  # nothing of a rejected batch is generated
    report.problems.sort(key=lambda problem: problem.row)
    return report
