"""Long videos: chained Video2World windows on the embedded model."""

import numpy as np
import pytest

from cosmos_pipeline.generate import generate
from cosmos_pipeline.loading import PipelineCache, PipelineKey
from cosmos_pipeline.long_video import generate_long, plan_windows, seam_consistency

from .conftest import tiny_request


@pytest.mark.parametrize(
    ("frames", "chunk", "overlap", "windows"),
    [
        (93, 77, 1, [77, 17]),
        (229, 77, 1, [77, 77, 77]),
        (233, 77, 1, [77, 77, 77, 5]),
        (121, 93, 5, [93, 33]),
        (17, 77, 1, [17]),
    ],
)
def test_plan_windows_gives_exact_frame_counts(frames, chunk, overlap, windows):
    planned = plan_windows(frames, chunk, overlap)
    assert planned == windows
    assert planned[0] + sum(w - overlap for w in planned[1:]) == frames


def test_long_video_of_three_windows_has_exact_frames_and_measured_seams():
    # 97 frames > one 93-frame window: chunks of 37 with a 1-latent-frame overlap give 3 windows.
    request = tiny_request(num_frames=97, chunk_size=37, chunk_overlap=1, height=32, width=48)
    assert request.is_long and plan_windows(97, 37, 1) == [37, 37, 25]
    steps = []
    pipe = PipelineCache().get(PipelineKey.for_request(request))
    result = generate_long(pipe, request, on_step=lambda i, total, s: steps.append((i, total)))

    assert result.frames.shape == (97, 32, 48, 3)
    assert result.seams == [37, 73]
    assert steps == [(i, 6) for i in range(6)] and len(result.timings.steps_s) == 6
    seams = seam_consistency(result.frames, result.seams)
    assert seams["seam_mean_abs_diff"] >= 0 and seams["window_mean_abs_diff"] > 0 and seams["seam_ratio"] > 0


def test_each_window_continues_from_the_last_frame_of_the_previous():
    request = tiny_request(num_frames=97, chunk_size=37, chunk_overlap=1, height=32, width=48)
    pipe = PipelineCache().get(PipelineKey.for_request(request))
    result = generate_long(pipe, request)
    first = generate(pipe, request.model_copy(update={"num_frames": 37}))
    np.testing.assert_array_equal(result.frames[:37], first.frames)  # window 1 is the plain generation


def test_seam_consistency_detects_a_jump():
    smooth = np.repeat(np.arange(10, dtype=np.uint8)[:, None, None, None], 4, axis=1)
    smooth = np.broadcast_to(smooth, (10, 4, 4, 3)).copy()
    jump = smooth.copy()
    jump[5:] += 100
    assert seam_consistency(smooth, [5])["seam_ratio"] == pytest.approx(1.0)
    assert seam_consistency(jump, [5])["seam_ratio"] > 50
