"""Evaluation suites (`configs/eval/*.toml`): assets x variants x seeds, expanded into the rows of a batch.

A suite names bundles (relative to the suite file), the variants to compare (a checkpoint and revision,
optionally a LoRA adapter on it, each with a label for reports), the seeds, and flag values every case
shares. `suite_rows` turns it into rows of the same shape as any batch, grouped by variant so each
variant's pipeline loads once.
"""

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cosmos_pipeline.bundle import Row
from cosmos_pipeline.errors import InputError
from cosmos_pipeline.policy import Policy, check_readable
from cosmos_pipeline.request import DEFAULT_REVISION, GenerationRequest
from cosmos_pipeline.settings import CONFIG_DIRS, Settings, request_rows

DEFAULT_SUITE = "configs/eval/variants.toml"  # the nightly comparison of the real 2B's revisions


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
        # Normalised (no `..`), so records show where an asset is, not how the suite reached it.
        assets = [Path(os.path.normpath(path.parent / asset)) for asset in suite.assets]
        variants = [
            variant.model_copy(update={"lora_path": Path(os.path.normpath(path.parent / variant.lora_path))})
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


def load_suite(path: Path, policy: Policy) -> EvaluationSuite:
    """A suite from configs/ or, like any input, from the policy's input roots."""
    if not any(path.resolve().is_relative_to(folder.resolve()) for folder in CONFIG_DIRS):
        try:
            check_readable(path, policy, "suite")
        except InputError as error:
            raise InputError(f"{error}, or in configs/") from None
    return EvaluationSuite.load(path)
