"""Layered settings, and the requests they shape.

Every value is resolved in one order, lowest first: the defaults below < the profile file
(`configs/<profile>.toml`, chosen by `profile=` or `COSMOS_PROFILE`, `default` otherwise) < the
environment (`COSMOS_*`, nested with `__`, e.g. `COSMOS_REQUEST__NUM_FRAMES=29`) < explicit values
(keyword arguments: flow parameters or the entry point's flags). `MLFLOW_TRACKING_URI` is honoured
when `COSMOS_TRACKING_URI` is not set.

A profile's `[request]` table holds request defaults (model, size, steps...). They sit below a
bundle's values and explicit flags, and above `GenerationRequest`'s own defaults, so a bundle
written for the real model runs unchanged on the embedded one under `profile=tiny`.

An evaluation suite (`configs/eval/*.toml`) names assets x variants x seeds; `suite_rows` expands
it into rows of the same shape as a batch. Command-line parsing never happens here: settings are
built from keyword arguments, files and the environment only.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cosmos_pipeline.bundle import (
    DEFAULT_OUTPUT_DIR,
    build_request,
    default_output_path,
    is_bundle,
    merge,
    normalise,
    preflight,
    read_bundle,
)
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.guardrail import GuardrailMode
from cosmos_pipeline.media import FitMode
from cosmos_pipeline.request import RESOLUTIONS, Dtype, GenerationRequest

# Profiles are looked up in the working directory's configs/ first (a deployment's checkout), then
# next to this package (an editable install run from elsewhere).
CONFIG_DIRS = (Path("configs"), Path(__file__).resolve().parents[1] / "configs")
DEFAULT_PROFILE = "default"


def profile_path(profile: str) -> Path | None:
    """The TOML file of `profile` (a name in configs/ or a path); None for a missing `default`."""
    if profile.endswith(".toml"):
        candidates = [Path(profile)]
    else:
        candidates = [directory / f"{profile}.toml" for directory in CONFIG_DIRS]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None and profile != DEFAULT_PROFILE:
        names = sorted({path.stem for directory in CONFIG_DIRS for path in directory.glob("*.toml")})
        raise InputError(
            f"settings profile {profile!r} not found (looked for {', '.join(map(str, candidates))}); "
            f"use one of: {', '.join(names) or '(none)'}, or a path to a .toml file"
        )
    return found


class RequestDefaults(BaseModel):
    """Request values a profile or the environment may set; unset ones leave the request's default."""

    model_config = ConfigDict(extra="forbid")

    model_id: str | None = None
    revision: str | None = None
    resolution: str | None = None  # a name in RESOLUTIONS; explicit height/width win
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    dtype: Dtype | None = None
    device: str | None = None
    device_map: str | None = None
    guardrail: GuardrailMode | None = None
    fit: FitMode | None = None

    @field_validator("resolution")
    @classmethod
    def _known_resolution(cls, resolution: str | None) -> str | None:
        if resolution is not None and resolution not in RESOLUTIONS:
            raise ValueError(f"unknown resolution {resolution!r}; use one of {', '.join(RESOLUTIONS)}")
        return resolution


class Settings(BaseSettings):
    """How the pipeline runs: tracking, outputs, retries, GPU slots, request defaults."""

    model_config = SettingsConfigDict(
        env_prefix="COSMOS_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    profile: str = DEFAULT_PROFILE
    # The working directory's SQLite store (gitignored); MLflow 3 refuses the plain file store.
    tracking_uri: str = Field(
        default="sqlite:///mlflow.db",
        validation_alias=AliasChoices("tracking_uri", "COSMOS_TRACKING_URI", "MLFLOW_TRACKING_URI"),
    )
    # Where a SQLite/file store keeps artifacts; a tracking server decides for itself.
    artifact_root: Path = Path("mlartifacts")
    experiment: str = "cosmos-generate"
    eval_experiment: str = "cosmos-evaluate"
    output_dir: Path = DEFAULT_OUTPUT_DIR
    retries: int = Field(default=2, ge=0)  # transient errors only (see tasks.generate.is_transient)
    retry_delay_s: float = Field(default=10.0, ge=0)
    gpu_slots: int = Field(default=1, ge=1)  # generations at once per GPU: one, or they thrash memory
    gpu_wait_timeout_s: float | None = None  # None waits for a free GPU as long as it takes
    max_input_artifact_mb: float = 25.0  # larger inputs are recorded by content hash only
    request: RequestDefaults = RequestDefaults()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: explicit values > environment > profile file > field defaults.
        assert isinstance(init_settings, InitSettingsSource)
        profile = init_settings.init_kwargs.get("profile") or os.environ.get("COSMOS_PROFILE")
        path = profile_path(profile or DEFAULT_PROFILE)
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if path is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=path),)
        return sources


def load_settings(profile: str | None = None, **explicit: Any) -> Settings:
    """Settings for `profile` with `explicit` values on top; a bad value is an InputError."""
    values = {key: value for key, value in explicit.items() if value is not None}
    if profile is not None:
        values["profile"] = profile
    try:
        return Settings(**values)
    except ValidationError as error:
        problems = "; ".join(
            f"`{'.'.join(map(str, item['loc']))}`: {item['msg']} (got {item.get('input')!r})"
            for item in error.errors()
        )
        profile = values.get("profile") or os.environ.get("COSMOS_PROFILE") or DEFAULT_PROFILE
        raise InputError(
            f"invalid settings (profile {profile}, COSMOS_* environment or explicit values): {problems}"
        ) from None


# ----------------------------------------------------------------------------- requests


@dataclass
class Problem:
    """One thing wrong with one row, for the validation report."""

    row: int  # 1-based position in the batch
    name: str | None
    field: str
    message: str


@dataclass
class Row:
    """One requested generation: where it came from, its layered values, its request or its problems."""

    index: int
    where: str
    fields: dict[str, Any]
    request: GenerationRequest | None = None
    problems: list[Problem] = field(default_factory=list)


def _request_problems(row: Row) -> list[Problem]:
    values = {key: value for key, value in row.fields.items() if key in GenerationRequest.model_fields}
    try:
        GenerationRequest(**values)
    except ValidationError as error:
        return [
            Problem(
                row.index,
                row.fields.get("name"),
                ".".join(str(part) for part in item["loc"]) or "request",
                item["msg"].removeprefix("Value error, ")
                + ("" if item["type"] == "value_error" else f" (got {item.get('input')!r})"),
            )
            for item in error.errors()
        ]
    return []


def request_rows(explicit: Mapping[str, Any], settings: Settings) -> list[Row]:
    """Every row a batch asks for, each with its request or its problems (never the first only).

    `explicit` maps flag names (seed or request spelling) to values, None meaning "not given";
    `input_path` may be a bundle or a media file. Layers, lowest first: `GenerationRequest`
    defaults < `settings.request` < bundle entry < `explicit`. Mirrors
    `cosmos_pipeline.bundle.resolve_requests`, adding the settings layer and per-row problems.
    """
    explicit = {key: value for key, value in explicit.items() if value is not None}
    input_path = explicit.pop("input_path", None)
    if input_path is not None and is_bundle(Path(input_path)):
        entries = read_bundle(Path(input_path))
    else:
        if input_path is not None:
            explicit["input_path"] = str(input_path)
        entries = [{"_where": "command line"}]
    output = explicit.pop("output_path", None)
    output_dir = settings.output_dir
    if output is not None and Path(output).suffix.lower() not in {".mp4", ".png"}:
        output_dir, output = Path(output), None  # a folder for many outputs
    if output is not None and len(entries) > 1:
        raise InputError(
            f"output_path {output} names one file but the bundle holds {len(entries)} requests; "
            "give a folder instead"
        )
    defaults = normalise(settings.request.model_dump(exclude_none=True))
    rows = []
    for index, entry in enumerate(entries, start=1):
        where = entry.pop("_where")
        row = Row(index, where, {})
        try:
            layered = merge(explicit, entry)
        except InputError as error:  # an unreadable prompt file or an unknown resolution
            message = str(error)
            where_wrong = next((key for key in ("resolution", "negative_prompt") if key in message), "prompt")
            row.problems.append(Problem(index, entry.get("name"), where_wrong, message))
            rows.append(row)
            continue
        if "height" in layered or "width" in layered:  # an explicit size beats the profile's resolution
            defaults_here = {k: v for k, v in defaults.items() if k not in ("height", "width")}
        else:
            defaults_here = defaults
        row.fields = {**defaults_here, **layered}
        row.fields.setdefault("name", Path(input_path).stem if input_path and len(entries) == 1 else None)
        row.fields["output_path"] = (
            output or row.fields.get("output_path") or default_output_path(row.fields, output_dir)
        )
        row.problems = _request_problems(row)
        if not row.problems:
            row.request = build_request(row.fields, where).with_seed()
        rows.append(row)
    return rows


def resolve(explicit: Mapping[str, Any], settings: Settings) -> list[GenerationRequest]:
    """The requests, or an InputError naming the first bad row; media and outputs pre-flighted.

    The entry point's fail-fast check: nothing is started for input that cannot run.
    """
    requests = []
    for row in request_rows(explicit, settings):
        if row.problems:
            raise InputError(f"{row.where}: " + "; ".join(f"`{p.field}`: {p.message}" for p in row.problems))
        assert row.request is not None
        preflight(row.request, row.where)
        requests.append(row.request)
    return requests


# ----------------------------------------------------------------------------- evaluation suites


class Variant(BaseModel):
    """One model variant of an evaluation: a checkpoint and revision, and its label in reports."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    model_id: str
    revision: str


class EvaluationSuite(BaseModel):
    """Assets x variants x seeds, with the generation values every case shares."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    experiment: str | None = None  # None: settings.eval_experiment
    assets: list[Path] = Field(min_length=1)  # bundles, relative to the suite file
    variants: list[Variant] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    overrides: dict[str, Any] = {}  # flag values for every case, e.g. resolution, num_output_frames

    @classmethod
    def load(cls, path: Path) -> "EvaluationSuite":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"evaluation suite not found: {path}") from None
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise InputError(f"evaluation suite {path} is not readable TOML: {error}") from None
        data.setdefault("name", path.stem)
        try:
            suite = cls(**data)
        except ValidationError as error:
            raise InputError(f"evaluation suite {path}: {error}") from None
        labels = [variant.label for variant in suite.variants]
        if len(set(labels)) != len(labels):
            raise InputError(f"evaluation suite {path}: variant labels must differ, got {labels}")
        assets = [asset if asset.is_absolute() else path.parent / asset for asset in suite.assets]
        return suite.model_copy(update={"assets": assets})


def suite_rows(suite: EvaluationSuite, settings: Settings, output_dir: Path) -> list[Row]:
    """Every case of `suite`, grouped by variant (so each variant's pipeline loads once).

    Outputs go to `output_dir/<variant>/seed-<seed>/<asset>.mp4`; rows are renumbered 1..N.
    """
    rows = []
    for variant in suite.variants:
        for seed in suite.seeds:
            for asset in suite.assets:
                explicit = {
                    **suite.overrides,
                    "input_path": str(asset),
                    "model_id": variant.model_id,
                    "revision": variant.revision,
                    "seed": seed,
                    "output_path": str(output_dir / variant.label / f"seed-{seed}"),
                }
                for row in request_rows(explicit, settings):
                    row.index = len(rows) + 1
                    for problem in row.problems:
                        problem.row = row.index
                    rows.append(row)
    return rows
