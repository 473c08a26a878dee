"""Run resolved requests in one process: each variant's pipeline loads once, outputs and their
sidecars are written atomically. The CLI and the Prefect generate task both call this."""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosmos_pipeline.generate import GenerationResult, StepCallback, generate
from cosmos_pipeline.loading import PIPELINES, PipelineCache, PipelineKey
from cosmos_pipeline.long_video import generate_long
from cosmos_pipeline.media import write_image, write_video
from cosmos_pipeline.request import GenerationRequest
from cosmos_pipeline.sidecar import write_sidecar

logger = logging.getLogger(__name__)
OUTPUT_FPS = 16  # Cosmos-Predict2.5 is trained on 16 fps video


@dataclass
class Output:
    result: GenerationResult
    path: Path
    sidecar: Path


@dataclass
class Failure:
    request: GenerationRequest
    error: Exception

    def __str__(self) -> str:
        return f"{self.request.name or self.request.output_path}: {type(self.error).__name__}: {self.error}"


@dataclass
class BatchReport:
    outputs: list[Output] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def write_output(result: GenerationResult) -> Path:
    request = result.request
    assert request.output_path is not None
    if request.num_frames == 1:
        return write_image(result.frames[0], request.output_path, overwrite=request.overwrite)
    return write_video(result.frames, request.output_path, fps=OUTPUT_FPS, overwrite=request.overwrite)


def run_request(
    request: GenerationRequest,
    cache: PipelineCache = PIPELINES,
    on_step: StepCallback | None = None,
    record: dict[str, Any] | None = None,
) -> Output:
    """Generate one request and write its output and sidecar (`record` adds to the sidecar)."""
    pipe = cache.get(PipelineKey.for_request(request))
    result = (generate_long if request.is_long else generate)(pipe, request, on_step)
    path = write_output(result)
    sidecar = write_sidecar(result, path, record)
    timings = result.timings
    logger.info(
        "%s: %s, %d frames %dx%d, seed %d, %.1f s (denoise %.1f s, decode %.1f s) -> %s",
        request.name or "generation", request.mode, request.num_frames, request.height, request.width,
        result.seed, timings.total_s, timings.denoising_s, timings.decode_s, path,
    )  # fmt: skip
    return Output(result, path, sidecar)


def run_requests(
    requests: list[GenerationRequest], cache: PipelineCache = PIPELINES, keep_going: bool = False
) -> BatchReport:
    """Run every request; with `keep_going` a failure is recorded and the batch goes on."""
    report = BatchReport()
    for request in requests:
        try:
            report.outputs.append(run_request(request, cache))
        except Exception as error:
            if not keep_going:
                raise
            logger.error("failed: %s: %s", request.name or request.output_path, error)
            report.failures.append(Failure(request, error))
    return report
