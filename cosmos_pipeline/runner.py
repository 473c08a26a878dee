"""Run resolved requests in one process: each variant's pipeline loads once, outputs are written
atomically. This is what the CLI and the Prefect generate task call."""

import logging
from dataclasses import dataclass
from pathlib import Path

from cosmos_pipeline.generate import GenerationResult, generate
from cosmos_pipeline.loading import PIPELINES, PipelineCache, PipelineKey
from cosmos_pipeline.media import write_image, write_video
from cosmos_pipeline.request import GenerationRequest

logger = logging.getLogger(__name__)
OUTPUT_FPS = 16  # Cosmos-Predict2.5 is trained on 16 fps video


@dataclass
class Output:
    result: GenerationResult
    path: Path


def write_output(result: GenerationResult) -> Path:
    request = result.request
    assert request.output_path is not None
    if request.num_frames == 1:
        return write_image(result.frames[0], request.output_path, overwrite=request.overwrite)
    return write_video(result.frames, request.output_path, fps=OUTPUT_FPS, overwrite=request.overwrite)


def run_request(request: GenerationRequest, cache: PipelineCache = PIPELINES) -> Output:
    pipe = cache.get(PipelineKey.for_request(request))
    result = generate(pipe, request)
    path = write_output(result)
    timings = result.timings
    logger.info(
        "%s: %s, %d frames %dx%d, seed %d, %.1f s (denoise %.1f s, decode %.1f s) -> %s",
        request.name or "generation",
        request.mode,
        request.num_frames,
        request.height,
        request.width,
        result.seed,
        timings.total_s,
        timings.denoising_s,
        timings.decode_s,
        path,
    )
    return Output(result, path)


def run_requests(requests: list[GenerationRequest], cache: PipelineCache = PIPELINES) -> list[Output]:
    return [run_request(request, cache) for request in requests]
