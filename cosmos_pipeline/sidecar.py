"""The record beside every output (`<output>.json`), so an output stays explainable away from MLflow.

Written locally beside its output; an output bound for an object store is uploaded with its sidecar
(`cosmos_pipeline.runner`), and read back from there."""

import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cosmos_pipeline
from cosmos_pipeline.storage import URI, read_text

if TYPE_CHECKING:  # the sidecar is read where no model runs: no torch import for that
    from cosmos_pipeline.generate import GenerationResult


def sidecar_path(output_path: Path | URI) -> Path | URI:
    return output_path.with_name(output_path.name + ".json")


def sidecar_record(result: "GenerationResult", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    import diffusers
    import torch

    request, timings = result.request, result.timings
    return {
        "request": request.model_dump(mode="json"),
        "request_key": request.key(),
        "mode": request.mode,
        "seed": result.seed,
        "model_id": request.model_id,
        "revision": request.revision,
        "adapter": None
        if request.lora_path is None
        else {"path": str(request.lora_path), "scale": request.lora_scale},
        "guardrail": result.guardrail,
        "timings": {
            "prompt_encoding_s": timings.prompt_encoding_s,
            "conditioning_s": timings.conditioning_s,
            "denoising_s": timings.denoising_s,
            "steps_s": timings.steps_s,
            "decode_s": timings.decode_s,
            "total_s": timings.total_s,
        },
        "peak_memory_bytes": result.peak_memory_bytes,
        "acceleration": result.acceleration,
        "forwards": timings.forwards,
        "seams": result.seams,
        "versions": {
            "cosmos_pipeline": cosmos_pipeline.__version__,
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }


def write_sidecar(result: "GenerationResult", output_path: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write atomically; the sidecar follows its output, so it is replaced with it."""
    path = sidecar_path(output_path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # Mode 0666 less the umask, as its output gets: whoever may read the output may read its record.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w") as file:
            json.dump(sidecar_record(result, extra), file, indent=2)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_sidecar(output_path: Path | URI) -> dict[str, Any] | None:
    """The output's record, or None where there is none (or it is unreadable)."""
    try:
        return json.loads(read_text(sidecar_path(output_path)))
    except (OSError, ValueError):  # InputError is a ValueError: a missing object, a store that is away
        return None
