"""Layered settings, and the requests they shape.

Every value is resolved in one order, lowest first: the defaults below < the profile file
(`configs/<profile>.toml`, chosen by `profile=` or `COSMOS_PROFILE`, `default` otherwise) < the
environment (`COSMOS_*`, nested with `__`, e.g. `COSMOS_REQUEST__NUM_FRAMES=29`) < explicit values
(keyword arguments: flow parameters or the entry point's flags). `MLFLOW_TRACKING_URI` is honoured
when `COSMOS_TRACKING_URI` is not set.

A profile's `[request]` table holds request defaults (model, size, steps...). They sit below a
bundle's values and explicit flags, and above `GenerationRequest`'s own defaults, so a bundle
written for the real model runs unchanged on the embedded one under `profile=tiny`.

Command-line parsing never happens here: settings are built from keyword arguments, files and the
environment only. Evaluation suites are `cosmos_pipeline.suites`.
"""

import json
import os
import tempfile
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
from cosmos_pipeline.bundle import DEFAULT_OUTPUT_DIR, Row
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.media import FitMode
from cosmos_pipeline.policy import Policy
from cosmos_pipeline.request import RESOLUTIONS, Dtype, GuardrailMode
from cosmos_pipeline.storage import Location

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
    """How the pipeline runs: tracking, outputs, GPU slots, warm workers, request defaults, policy."""

    model_config = SettingsConfigDict(
        env_prefix="COSMOS_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    profile: str = DEFAULT_PROFILE
    tracking_uri: str = Field(
        default="sqlite:///mlflow.db",
        validation_alias=AliasChoices("tracking_uri", "COSMOS_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="this folder's SQLite store; MLFLOW_TRACKING_URI too (MLflow 3 refuses a file store)",
    )
    artifact_root: Path = Field(
        default=Path("mlartifacts"),
        description="artifacts of a SQLite store (a tracking server keeps its own)",
    )
    experiment: str = "cosmos-generate"
    eval_experiment: str = "cosmos-evaluate"
    output_dir: Location = DEFAULT_OUTPUT_DIR  # a folder, or a URI prefix (`s3://bucket/outputs`)
    gpu_slots: int = Field(default=1, ge=1, description="generations at once per GPU: more thrash its memory")
    gpu_wait_timeout_s: float | None = Field(
        default=None, description="unset: wait for a free GPU as long as it takes"
    )
    slot_dir: Path = Field(
        default=Path(tempfile.gettempdir()) / "cosmos-world-pipeline-slots",
        description="one lock file per GPU slot of the host, shared by every checkout and user",
    )
    max_input_artifact_mb: float = Field(
        default=25.0, description="larger inputs are recorded by content hash only"
    )
    request: RequestDefaults = Field(
        default=RequestDefaults(),
        description="request defaults: below bundles and flags, above the request's own",
    )
    acceleration: Acceleration = Field(
        default=Acceleration(),
        description="speed and memory (GPU): the default mode unless set here or by flags",
    )
    policy: Policy = Field(
        default=Policy(),
        description="what requests may read, write and ask for (a shared deployment sets roots)",
    )
    warm_workers: bool = Field(
        default=False,
        description="generations go to long-lived `cosmos-worker` processes (README Production)",
    )
    warm_start_timeout_s: float = Field(
        default=3600.0, gt=0, description="a generation no warm worker starts within this fails"
    )
    warm_lost_after_s: float = Field(
        default=30.0, ge=15.0, description="a worker silent this long (it beats every 5 s) is gone"
    )
    warm_resubmissions: int = Field(
        default=2, ge=0, description="times a lost worker's generation goes to another"
    )
    keep_alive_s: float = Field(
        default=300.0,
        ge=0,
        description="cosmos-generate's warm process stays this long after a call, model loaded (0: none)",
    )
    spool_dir: Path | None = Field(
        default=None, description="runs the tracking server could not take; unset: <output_dir>/.mlflow-spool"
    )

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


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return repr(value)


def _lines(model: type[BaseModel], prefix: str = "# ") -> list[str]:
    lines = []
    for name, info in model.model_fields.items():
        value = info.default
        if isinstance(value, BaseModel) or name == "profile":
            continue
        text = f"{prefix}{name} = {_toml(value) if value is not None else '<unset>'}"
        if info.description:
            text = f"{text:<44} # {info.description}"
        lines.append(text)
    return lines


def default_profile() -> str:
    """configs/default.toml: every setting at its default, commented out (a test keeps the two equal)."""
    lines = [
        "# The profile used when none is named (COSMOS_PROFILE or profile=...). Layers, lowest first:",
        "# field defaults (cosmos_pipeline/settings.py) < this file < COSMOS_* environment < explicit",
        "# values (flags, flow parameters).",
        "# Every value shown is the default; uncomment a line to change it site-wide. Generated by",
        "# `python -m cosmos_pipeline.settings > configs/default.toml`.",
        "",
        *_lines(Settings),
    ]
    for name, info in Settings.model_fields.items():
        if isinstance(info.default, BaseModel):
            lines += ["", f"# [{name}]  ({info.description})", *_lines(type(info.default))]
    return "\n".join(lines) + "\n"


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


if __name__ == "__main__":
    print(default_profile(), end="")
