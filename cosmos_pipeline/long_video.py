"""Videos longer than one window: chained Video2World, as NVIDIA's native scripts do.

The first window is generated from the request's own input (text, image or video). Each next
window is conditioned on the last `overlap_frames` frames of the video so far (1 or 2 latent
frames) and adds `window - overlap` new frames. Frame counts stay exact: the total and every
window are 4k+1, so the last window is sized to what remains.
"""

import numpy as np

from cosmos_pipeline.acceleration.options import Acceleration
from cosmos_pipeline.generate import GenerationResult, StepCallback, Timings, generate
from cosmos_pipeline.request import VAE_TEMPORAL_FACTOR, GenerationRequest


def plan_windows(num_frames: int, chunk_size: int, overlap_frames: int) -> list[int]:
    """Frames per window; the first window adds all its frames, the others `window - overlap`."""
    windows = [min(chunk_size, num_frames)]
    remaining = num_frames - windows[0]
    while remaining > 0:
        window = min(chunk_size, remaining + overlap_frames)
        windows.append(window)
        remaining -= window - overlap_frames
    assert remaining == 0 and all((w - 1) % VAE_TEMPORAL_FACTOR == 0 for w in windows), windows
    return windows


def seam_consistency(frames: np.ndarray, seams: list[int]) -> dict[str, float]:
    """Mean absolute frame-to-frame change (0-255) across seams against inside windows.

    A seam at index s is the step from frame s-1 (end of one window) to frame s (first new frame
    of the next). A ratio near 1 means the seams are as smooth as the motion inside windows.
    """
    steps = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
    seam_steps = [steps[s - 1] for s in seams]
    inside = np.delete(steps, [s - 1 for s in seams])
    seam, within = float(np.mean(seam_steps)), float(np.mean(inside)) if inside.size else 0.0
    return {
        "seam_mean_abs_diff": seam,
        "window_mean_abs_diff": within,
        "seam_ratio": seam / max(within, 1e-6),
    }


def generate_long(
    pipe,
    request: GenerationRequest,
    on_step: StepCallback | None = None,
    options: Acceleration | None = None,
) -> GenerationResult:
    request = request.with_seed()
    assert request.seed is not None
    overlap = request.overlap_frames
    windows = plan_windows(request.num_frames, request.chunk_size, overlap)
    total_steps = len(windows) * request.num_inference_steps

    def window_step(offset: int):
        if on_step is None:
            return None
        return lambda i, _total, seconds: on_step(offset + i, total_steps, seconds)

    first = request.model_copy(update={"num_frames": windows[0], "output_path": None})
    result = generate(pipe, first, window_step(0), options=options)
    frames, timings, seams = [result.frames], result.timings, []
    length = windows[0]
    for index, window in enumerate(windows[1:], start=1):
        window_request = request.model_copy(
            update={
                "num_frames": window,
                "num_latent_conditional_frames": request.chunk_overlap,
                "seed": request.seed + index,  # fresh noise per window, still reproducible
                "output_path": None,
            }
        )
        tail = np.concatenate(frames)[-overlap:]
        result = generate(
            pipe, window_request, window_step(index * request.num_inference_steps), tail, options=options
        )
        frames.append(result.frames[overlap:])
        seams.append(length)
        length += window - overlap
        timings = _add(timings, result.timings)
    video = np.concatenate(frames)
    assert video.shape[0] == request.num_frames
    return GenerationResult(
        request,
        video,
        result.latents,
        result.guardrail,
        timings,
        result.peak_memory_bytes,
        seams=seams,
        acceleration=result.acceleration,
    )


def _add(a: Timings, b: Timings) -> Timings:
    return Timings(
        prompt_encoding_s=a.prompt_encoding_s + b.prompt_encoding_s,
        conditioning_s=a.conditioning_s + b.conditioning_s,
        steps_s=a.steps_s + b.steps_s,
        decode_s=a.decode_s + b.decode_s,
        total_s=a.total_s + b.total_s,
        forwards=a.forwards + b.forwards,
    )
