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
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cosmos_pipeline import bundle
from cosmos_pipeline.acceleration.options import Acceleration
from cosmos_pipeline.bundle import DEFAULT_OUTPUT_DIR, Plan, Row
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.media import FitMode
from cosmos_pipeline.policy import Policy
from cosmos_pipeline.request import DEFAULT_REVISION, RESOLUTIONS, Dtype, GenerationRequest, GuardrailMode

# Profiles are looked up in the working directory's configs/ first (a deployment's checkout), then
# next to this package (an editable install run from elsewhere).
CONFIG_DIRS = (Path("configs"), Path(__file__).resolve().parents[1] / "configs")
DEFAULT_PROFILE = "default"


def config_candidates(relative: str) -> list[Path]:
    return [directory / relative for directory in CONFIG_DIRS]


def find_config(relative: str) -> Path:
    """A file under configs/ (e.g. `expectations/requests.json`), from the first directory holding it."""
    candidates = config_candidates(relative)
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise InputError(f"configuration file not found: looked for {', '.join(map(str, candidates))}")
    return found


def profile_path(profile: str) -> Path | None:
    """The TOML file of `profile` (a name in configs/ or a path); None for a missing `default`."""
    candidates = [Path(profile)] if profile.endswith(".toml") else config_candidates(f"{profile}.toml")
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
    # Speed and memory: the default mode unless a profile, COSMOS_ACCELERATION__* or a flag says otherwise.
    acceleration: Acceleration = Acceleration()
    # What requests may read, write and ask for; a shared deployment sets the roots.
    policy: Policy = Policy()
    # Production (README "Production"): generations go to long-lived `cosmos-worker` processes that keep
    # pipelines loaded; one that no worker starts within the timeout fails instead of waiting forever.
    warm_workers: bool = False
    warm_start_timeout_s: float = Field(default=3600.0, gt=0)
    # A worker that stops beating (every 5 s) this long is gone: its generation goes to another worker.
    warm_lost_after_s: float = Field(default=30.0, ge=15.0)
    # Runs the tracking server could not take wait here for `cosmos-sync`; None: <output_dir>/.mlflow-spool.
    spool_dir: Path | None = None

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
    if profile:  # None or "" (an unset template field): COSMOS_PROFILE, else `default`
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


def request_rows(explicit: Mapping[str, Any], settings: Settings) -> list[Row]:
    """Every row of a batch with the settings layer (`settings.request`) below bundles and flags."""
    return bundle.request_rows(
        explicit, settings.request.model_dump(exclude_none=True), settings.output_dir, settings.policy
    )


def resolve(explicit: Mapping[str, Any], settings: Settings, skip_existing: bool = False) -> Plan:
    """The entry point's fail-fast resolution under `settings` (request defaults, output folder, policy)."""
    return bundle.resolve_requests(
        explicit,
        skip_existing=skip_existing,
        policy=settings.policy,
        defaults=settings.request.model_dump(exclude_none=True),
        output_dir=settings.output_dir,
    )


# ----------------------------------------------------------------------------- evaluation suites


class Variant(BaseModel):
    """One model variant of an evaluation: a checkpoint (hub id or local folder) and revision, an
    optional LoRA adapter on it, and its label in reports."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    model_id: str
    revision: str = DEFAULT_REVISION
    lora_path: Path | None = None  # relative to the suite file
    lora_scale: float = 1.0

    @property
    def identity(self) -> tuple[str, str, str | None, float]:
        return variant_identity(self)


def variant_identity(variant: "Variant | GenerationRequest") -> tuple[str, str, str | None, float]:
    """What tells variants apart: a request and the suite variant it came from share it."""
    lora = None if variant.lora_path is None else str(Path(variant.lora_path).resolve())
    return variant.model_id, variant.revision, lora, variant.lora_scale if lora else 1.0


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
        variants = [
            variant.model_copy(update={"lora_path": (path.parent / variant.lora_path).resolve()})
            if variant.lora_path is not None and not variant.lora_path.is_absolute()
            else variant
            for variant in suite.variants
        ]
        return suite.model_copy(update={"assets": assets, "variants": variants})


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
                    "lora_path": None if variant.lora_path is None else str(variant.lora_path),
                    "lora_scale": variant.lora_scale if variant.lora_path is not None else None,
                    "seed": seed,
                    "output_path": str(output_dir / variant.label / f"seed-{seed}"),
                }
                for row in request_rows(explicit, settings):
                    row.index = len(rows) + 1
                    for problem in row.problems:
                        problem.row = row.index
                    rows.append(row)
    return rows
