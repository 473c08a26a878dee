"""After the GPU: write the output (atomically, with its sidecar), measure it, gate it, pick key frames.

An output bound for an object store is written in a temporary folder and uploaded with its sidecar; the
local copies stay there for tracking until the `Postprocessed` is closed.

The frame gate (`configs/expectations/frames.json`, in GX's shared process) flags black, white, flat,
clipped or flashing frames and a wrong frame count. A flagged output is kept and recorded as `flagged`
with the reasons (a warning, not a failure: a person decides whether a strange video is wrong).
"""

import errno
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from cosmos_pipeline.metrics import conditioning_fidelity, frame_statistics, output_metrics
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.runner import write_outputs
from cosmos_pipeline.sidecar import sidecar_path
from cosmos_pipeline.storage import URI
from tasks.expectations import INDEX_COLUMN, failures, run_suite
from tasks.generate import Generation

FRAMES_SUITE = "frames"


@dataclass
class Postprocessed:
    output_path: Path | URI
    sidecar_path: Path | URI
    files: tuple[Path, Path]  # the output and sidecar on this host, for tracking (staged copies of URIs)
    metrics: dict[str, float]
    frame_stats: pd.DataFrame  # one line per frame, `row` = frame index
    gate: dict[str, Any]  # the GX result of the frame suite
    gate_problems: list[str]
    keyframes: list[tuple[int, np.ndarray]]  # (frame index, frame)
    staging: tempfile.TemporaryDirectory | None = None  # holds `files` of an uploaded output

    def close(self) -> None:
        """Remove the staged copies of an uploaded output (nothing for a local one)."""
        if self.staging is not None:
            self.staging.cleanup()

    @property
    def gate_passed(self) -> bool:
        return not self.gate_problems

    @property
    def flagged_frames(self) -> int:
        """How many frames an expectation of the gate flagged (a wrong frame count flags none)."""
        return len({row for failure in failures(self.gate) for row in failure.rows})

    @property
    def gate_label(self) -> str:
        """`passed`, or `flagged: <reasons>`: what the gate found, in the words of its expectations."""
        return "passed" if self.gate_passed else "flagged: " + "; ".join(self.gate_problems)[:480]


def keyframe_indices(num_frames: int) -> list[int]:
    """First, middle and last frame (fewer for short outputs)."""
    return sorted({0, num_frames // 2, num_frames - 1})


def frame_table(frames: np.ndarray) -> pd.DataFrame:
    stats = frame_statistics(frames)
    return pd.DataFrame({INDEX_COLUMN: np.arange(frames.shape[0]), **stats})


# The toy-world scorer's figures under the names runs and reports give them (`tasks.report.FIGURES`).
QUALITY_KEYS = {
    "toy_adherence": "quality/adherence",
    "toy_colour": "quality/colour_right",
    "toy_direction": "quality/direction_right",
}


def quality(request: GenerationRequest, frames: np.ndarray) -> dict[str, float]:
    """How well an embedded-model output shows what its toy-world prompt says (colour and motion of every
    object, `cosmos_pipeline.toyscore`); nothing for other models or prompts outside the toy grammar."""
    from cosmos_pipeline.tiny import is_embedded
    from cosmos_pipeline.toyscore import score_prompt

    if not is_embedded(request.model_id):
        return {}
    scores = score_prompt(request.prompt, frames) or {}
    return {QUALITY_KEYS[key]: value for key, value in scores.items() if key in QUALITY_KEYS}


def measure(generation: Generation) -> dict[str, float]:
    """Output metrics; with the input's fidelity for Image2World/Video2World, seams for long videos and the
    toy-world figures (keys `quality/...`) for the embedded model."""
    from cosmos_pipeline.generate import load_conditioning  # torch: only where a generation ran
    from cosmos_pipeline.long_video import seam_consistency

    result = generation.result
    metrics = output_metrics(result.frames)
    conditioning = load_conditioning(result.request)
    if conditioning is not None:
        metrics |= conditioning_fidelity(conditioning, result.frames)
    if result.seams:
        metrics |= seam_consistency(result.frames, result.seams)
    return metrics | quality(result.request, result.frames)


def gate(table: pd.DataFrame, num_frames: int) -> tuple[dict[str, Any], list[str]]:
    """The frame suite's result and one line per failed expectation."""
    count = {
        "type": "expect_table_row_count_to_equal",
        "kwargs": {"value": num_frames},
        "meta": {"field": "frames", "message": f"the output should have {num_frames} frames"},
    }
    result = run_suite(table, FRAMES_SUITE, extra=[count]).result()
    problems = [
        f"{failure.message}" + (f" (frames {failure.rows[:10]})" if failure.rows else "")
        for failure in failures(result)
    ]
    return result, problems


class OutputWriteError(OSError):
    """The output or its sidecar could not be written; nothing was left behind."""


# errno -> what to do about it
WRITE_FIXES = {
    errno.ENOSPC: "free space there or choose another output folder",
    errno.EDQUOT: "raise the quota or choose another output folder",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.EACCES: "fix its permissions or choose another output folder",
    errno.EPERM: "fix its permissions or choose another output folder",
}


def write_or_explain(
    generation: Generation, record: dict[str, Any] | None, staging: Path | None = None
) -> tuple[Path | URI, Path | URI]:
    """The output and its sidecar (atomic; no output is left without its sidecar), or a clear error.

    A disk that fills up between the pre-flight check and the write is reported with what to do;
    it is not retried (the frames are gone with this process, and the disk is still full).
    """
    try:
        return write_outputs(generation.result, record, staging)
    except OSError as error:
        if error.errno not in WRITE_FIXES:
            raise
        target = generation.result.request.output_path
        why = f"{error.strerror or error}; nothing was written: {WRITE_FIXES[error.errno]}"
        raise OutputWriteError(error.errno, f"cannot write {target}: {why}") from None


def postprocess(generation: Generation, record: dict[str, Any] | None = None) -> Postprocessed:
    result = generation.result
    uploaded = isinstance(result.request.output_path, URI)
    staging = tempfile.TemporaryDirectory(prefix="cosmos-output-") if uploaded else None
    folder = None if staging is None else Path(staging.name)
    try:
        path, sidecar = write_or_explain(generation, record, folder)
    except BaseException:
        if staging is not None:
            staging.cleanup()
        raise
    copy = path if folder is None else folder / path.name
    files = (Path(copy), Path(sidecar_path(copy)))
    table = frame_table(result.frames)
    gate_result, problems = gate(table, result.request.num_frames)
    keyframes = [(index, result.frames[index]) for index in keyframe_indices(result.frames.shape[0])]
    return Postprocessed(
        path, sidecar, files, measure(generation), table, gate_result, problems, keyframes, staging
    )


@task(
    name="postprocess",
    task_run_name="postprocess-{generation.result.request.label}",
    cache_policy=NONE,
    persist_result=False,
)
def postprocess_output(generation: Generation, record: dict[str, Any] | None = None) -> Postprocessed:
    """Write the output and its sidecar (`record` adds to it), measure, gate and pick key frames."""
    logger = get_run_logger()
    post = postprocess(generation, record)
    logger.info("wrote %s", post.output_path)
    if post.gate_problems:
        logger.warning("frame gate flagged %s: %s", post.output_path.name, "; ".join(post.gate_problems))
    return post
