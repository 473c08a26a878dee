"""Asset bundles and the one place where the seed's flag names become request fields.

A bundle is a `.json` file (one request) or a `.jsonl` file (one request per line), on disk or in an
object store (`s3://...`). Paths inside a bundle are relative to the bundle file (a bundle's URI is
the base of its relative keys). Values are layered: an explicit CLI value beats the
bundle, which beats the request's default. Keys of NVIDIA's bundles that do not apply here are
accepted and ignored; any other unknown key is an error naming the nearest known one, so a typo
is never silently dropped. `name` names the run and its output.
"""

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cosmos_pipeline.errors import InputError
from cosmos_pipeline.policy import Policy, check_readable
from cosmos_pipeline.request import RESOLUTIONS, GenerationRequest
from cosmos_pipeline.sidecar import read_sidecar
from cosmos_pipeline.storage import URI, Location, exists, is_uri, location, read_text

LOCAL_POLICY = Policy()  # the CLI's: the user's own files anywhere, default size limits

BUNDLE_SUFFIXES = frozenset({".json", ".jsonl"})
DEFAULT_OUTPUT_DIR = Path("outputs")

# The seed script's names (and the native scripts' bundle keys) -> request fields.
SEED_NAMES = {
    "num_output_frames": "num_frames",
    "num_steps": "num_inference_steps",
    "guidance": "guidance_scale",
}
# Keys a bundle may carry whose values are paths relative to the bundle file.
PATH_KEYS = ("input_path", "prompt_path", "negative_prompt_path", "output_path")
# Keys that are read from a file: the key, its `_path` twin.
TEXT_KEYS = ("prompt", "negative_prompt")
# Keys of NVIDIA's cosmos-predict2.5 bundles (its `InferenceArguments`) that do not apply here: the mode
# is derived from the inputs, and a video longer than MAX_WINDOW_FRAMES is always chained. README
# "Bundles" lists them (a test checks).
UPSTREAM_IGNORED_KEYS = ("inference_type", "enable_autoregressive")
# Every key a bundle may hold: request fields by their own names (but the one `with_seed` sets), the
# seed's names, `resolution`, the prompt files and the ignored upstream keys.
BUNDLE_KEYS = frozenset(
    {*GenerationRequest.model_fields, *SEED_NAMES, "resolution", *PATH_KEYS, *UPSTREAM_IGNORED_KEYS}
    - {"seed_chosen"}
)
# Flags a command line or flow may give on top of a bundle's keys.
FLAG_KEYS = BUNDLE_KEYS | {"override_visual_input"}


def is_bundle(path: Path | URI) -> bool:
    return path.suffix.lower() in BUNDLE_SUFFIXES


def read_bundle(path: Path | URI, policy: Policy = LOCAL_POLICY) -> list[dict[str, Any]]:
    """The raw entries of a bundle, with relative paths made relative to the bundle's folder."""
    check_readable(path, policy, "bundle")
    try:
        text = read_text(path, policy.max_media_bytes)
    except FileNotFoundError:
        raise InputError(f"bundle not found: {path}") from None
    except InputError as error:
        raise InputError(f"bundle not readable: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"bundle not readable: {path} ({error})") from None
    lines = text.splitlines() if path.suffix.lower() == ".jsonl" else [text]
    entries, unreadable = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip() and path.suffix.lower() == ".jsonl":
            continue
        where = f"{path}:{number}" if path.suffix.lower() == ".jsonl" else str(path)
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            unreadable.append(f"bundle {where} is not valid JSON: {error}")
            continue
        if not isinstance(entry, dict):
            unreadable.append(f"bundle {where} must hold a JSON object, not {type(entry).__name__}")
            continue
        for key in PATH_KEYS:  # a value that is no path is its row's problem (`request_rows`)
            value = entry.get(key)
            if isinstance(value, str) and value and not is_uri(value) and not Path(value).is_absolute():
                # Below a URI as text: the row's own check refuses a key that climbs out (`..`).
                joined = f"{str(path.parent).rstrip('/')}/{value}"
                entry[key] = joined if isinstance(path, URI) else str(path.parent / value)
        entry["_where"] = where
        entries.append(entry)
    if unreadable:  # every line that holds no request, not only the first
        raise InputError("; ".join(unreadable))
    if not entries:
        raise InputError(f"bundle {path} holds no requests")
    return entries


def unknown_keys(values: Mapping[str, Any], known: frozenset[str] = BUNDLE_KEYS) -> dict[str, str]:
    """Each key of `values` that is not in `known`, with what to do about it."""
    problems = {}
    for key in sorted(set(values) - known):
        [nearest] = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or [None]
        problems[key] = (
            f"unknown key; did you mean `{nearest}`?"
            if nearest
            else f"unknown key; the keys are {', '.join(f'`{name}`' for name in sorted(known))}"
        )
    return problems


def normalise(values: Mapping[str, Any]) -> dict[str, Any]:
    """Seed/bundle names -> request field names; `resolution` -> height and width.

    `resolution` is a name (`720p`, or `720`), NVIDIA's "height,width", or its "none" (the default size).
    """
    fields = {SEED_NAMES.get(key, key): value for key, value in values.items() if value is not None}
    resolution = fields.pop("resolution", None)
    if resolution is not None and str(resolution).lower() != "none":
        name = str(resolution) if str(resolution).endswith("p") else f"{resolution}p"
        sizes = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", str(resolution))
        if name not in RESOLUTIONS and not sizes:
            raise InputError(
                f'unknown resolution {resolution!r}; use one of {", ".join(RESOLUTIONS)}, or "height,width"'
            )
        height, width = RESOLUTIONS[name] if name in RESOLUTIONS else map(int, sizes.groups())
        fields.setdefault("height", height)
        fields.setdefault("width", width)
    return fields


def _read_text_file(path: str, key: str, policy: Policy) -> str:
    place = location(path)
    check_readable(place, policy, f"--{key}")
    try:
        return read_text(place, policy.max_media_bytes).strip()
    except (OSError, UnicodeDecodeError, InputError) as error:
        raise InputError(f"cannot read --{key} {path}: {error}") from None


def _take_text(layer: dict[str, Any], key: str, policy: Policy) -> str | None:
    """A layer's text for `key`: inline text or the stripped contents of its `_path` file."""
    path = layer.pop(f"{key}_path", None)
    inline = layer.pop(key, None)
    if inline is not None:
        if not isinstance(inline, str):
            raise InputError(f"`{key}` must be text, not {inline!r}")
        return inline
    return None if path is None else _read_text_file(path, f"{key}_path", policy)


def merge(
    cli: Mapping[str, Any], entry: Mapping[str, Any], policy: Policy = LOCAL_POLICY
) -> tuple[dict[str, Any], dict[str, str]]:
    """CLI values over bundle values, and what was wrong on the way (field -> message: an unknown resolution,
    a prompt file that cannot be read, a non-text prompt), so that a row's report names every problem. A
    prompt and its file count as one source per layer."""
    problems: dict[str, str] = {}
    layers = []
    for layer in (cli, entry):
        try:
            layers.append(normalise(layer))
        except InputError as error:  # the only one `normalise` raises: an unknown resolution
            problems["resolution"] = str(error)
            layers.append(normalise({key: value for key, value in layer.items() if key != "resolution"}))
    cli_fields, bundle_fields = layers
    for key in TEXT_KEYS:
        texts = []
        for fields in (cli_fields, bundle_fields):
            try:
                texts.append(_take_text(fields, key, policy))
            except InputError as error:
                problems.setdefault(key, str(error))
                texts.append(None)
        text = next((text for text in texts if text is not None), None)
        if text is not None:
            cli_fields[key] = text
    media = cli_fields.pop("override_visual_input", None)
    merged = {**bundle_fields, **cli_fields}
    if media is not None:
        merged["input_path"] = media
    return merged, problems


def default_output_path(fields: Mapping[str, Any], output_dir: Path | URI) -> Path | URI:
    name = fields.get("name") or "generation"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "generation"
    suffix = ".png" if fields.get("num_frames") == 1 else ".mp4"
    return output_dir / f"{safe}{suffix}"


@dataclass
class Problem:
    """One thing wrong with one row of a batch, for the validation report."""

    row: int  # 1-based position in the batch
    name: str | None
    field: str
    message: str

    def __post_init__(self) -> None:
        # A key or name as the user wrote it, control characters included, would break the report's lines.
        self.field = printable(self.field)
        self.name = None if self.name is None else printable(str(self.name))


def printable(text: str) -> str:
    """`text`, with any newline or other unprintable character written as its escape (`\\n`)."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


@dataclass
class Row:
    """One requested generation: where it came from, its layered values, its request or its problems."""

    index: int
    where: str
    fields: dict[str, Any]
    request: GenerationRequest | None = None
    problems: list[Problem] = field(default_factory=list)


def _validate_row(row: Row, reported: set[str] = frozenset()) -> None:
    """Set the row's (seeded) request, or its problems: every bad field, not only the first (a field in
    `reported` already has its problem, such as a prompt whose file could not be read)."""
    values = {key: value for key, value in row.fields.items() if key in GenerationRequest.model_fields}
    try:
        row.request = GenerationRequest(**values).with_seed()
    except ValidationError as error:
        for item in error.errors():
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "finite_number":
                message = "must be a finite number"
            elif item["type"] not in ("value_error", "missing"):
                message += f" (got {item.get('input')!r})"
            field_name = ".".join(str(part) for part in item["loc"]) or "request"
            if field_name in reported:
                continue
            row.problems.append(Problem(row.index, row.fields.get("name"), field_name, message))


def already_done(request: GenerationRequest) -> bool:
    """The output exists and its sidecar records the same request key."""
    assert request.output_path is not None
    record = read_sidecar(request.output_path) if exists(request.output_path) else None
    return record is not None and record.get("request_key") == request.key()


def read_entries(input_path: Path | URI, policy: Policy = LOCAL_POLICY) -> list[dict[str, Any]]:
    """Entries of a bundle, or of every bundle in a local folder (sorted by name)."""
    if isinstance(input_path, Path) and input_path.is_dir():
        check_readable(input_path, policy, "bundle folder")
        bundles = sorted(path for path in input_path.iterdir() if is_bundle(path))
        if not bundles:
            raise InputError(f"folder {input_path} holds no .json or .jsonl bundles")
        return [entry for bundle in bundles for entry in read_bundle(bundle, policy)]
    return read_bundle(input_path, policy)


def request_rows(
    explicit: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    output_dir: Location = DEFAULT_OUTPUT_DIR,
    policy: Policy = LOCAL_POLICY,
) -> list[Row]:
    """Every row an invocation asks for, each with its seeded request or all its problems.

    `explicit` maps flag names (seed or request spelling) to values, None meaning "not given";
    `input_path` may be a bundle, a folder of bundles or a media file. Layers, lowest first:
    `GenerationRequest` defaults < `defaults` (a settings profile) < bundle entry < `explicit`.
    Bundles and prompt files are read only under `policy`'s input roots.
    """
    explicit = {key: value for key, value in explicit.items() if value is not None}
    unknown = unknown_keys(explicit, FLAG_KEYS)
    if unknown:  # a flag or flow parameter applies to every row: refuse the invocation
        raise InputError("overrides: " + "; ".join(f"`{key}`: {message}" for key, message in unknown.items()))
    for key in PATH_KEYS:  # flow parameters are JSON: a list or a number is not a path
        if key in explicit and not isinstance(explicit[key], str | Path):
            raise InputError(f"`{key}` must be a path string, not {explicit[key]!r}")
    input_path = explicit.pop("input_path", None)
    source = None if input_path is None else location(input_path)
    if source is not None and (is_bundle(source) or isinstance(source, Path) and source.is_dir()):
        entries = read_entries(source, policy)
    else:
        if input_path is not None:
            explicit["input_path"] = str(input_path)
        entries = [{"_where": "command line"}]
    output = explicit.pop("output_path", None)
    if output is not None and location(output).suffix.lower() not in {".mp4", ".png"}:
        output_dir, output = location(output), None  # a folder for many outputs
    if output is not None and len(entries) > 1:
        raise InputError(
            f"--output_path {output} names one file but the bundle holds {len(entries)} requests; "
            "give a folder instead"
        )
    base = normalise(defaults or {})
    rows = []
    for index, entry in enumerate(entries, start=1):
        row = Row(index, entry.pop("_where"), {})
        rows.append(row)
        problems = unknown_keys(entry)
        for key in PATH_KEYS:
            if entry.get(key) is not None and not isinstance(entry[key], str):
                problems[key] = f"must be a path string, not {entry.pop(key)!r}"
        row.problems += [Problem(index, entry.get("name"), key, message) for key, message in problems.items()]
        layered, merge_problems = merge(explicit, entry, policy)
        row.problems += [
            Problem(index, entry.get("name"), key, message) for key, message in merge_problems.items()
        ]
        row.fields = {**base, **layered}  # an explicit height or width beats a default resolution
        row.fields.setdefault("name", source.stem if source is not None and len(entries) == 1 else None)
        row.fields["output_path"] = (
            output or row.fields.get("output_path") or default_output_path(row.fields, output_dir)
        )
        _validate_row(row, reported=set(merge_problems))
    return rows
