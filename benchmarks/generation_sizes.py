"""What a generation with the embedded model costs on this CPU at the sizes the tests use: wall time, this
process's CPU time, the denoising steps and the decode, one call each after a warm-up. The tests pick their
sizes from it (a kill that must land mid-generation needs seconds of it; what runs again after the kill
should cost little):

    .venv/bin/python benchmarks/generation_sizes.py
"""

import os
import tempfile
import time

os.environ.setdefault("COSMOS_CACHE_DIR", tempfile.mkdtemp(prefix="cosmos-cache-"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as tests/conftest.py sets it

from cosmos_pipeline.generate import generate  # noqa: E402
from cosmos_pipeline.loading import PipelineKey, load_pipeline  # noqa: E402
from cosmos_pipeline.request import GenerationRequest  # noqa: E402

TINY = {"model_id": "embedded:tiny", "device": "cpu", "height": 64, "width": 112, "num_frames": 9}
SIZES = [
    {"num_inference_steps": 2},
    {"num_inference_steps": 16},
    {"num_inference_steps": 100},
    {"height": 128, "width": 224, "num_inference_steps": 16},
    {"height": 256, "width": 448, "num_frames": 29, "num_inference_steps": 6},
]


def request(**overrides) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a robot arm stacks boxes", "seed": 3, **TINY, **overrides})


def main() -> None:
    pipe = load_pipeline(PipelineKey.for_request(request()))
    generate(pipe, request())  # warm-up: allocator, thread pools
    print("size                                   wall s   CPU s   steps s  decode s")
    for overrides in SIZES:
        wall, cpu = time.perf_counter(), time.process_time()
        timings = generate(pipe, request(**overrides)).timings
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        shown = {**TINY, **overrides}
        frames, steps = shown["num_frames"], shown["num_inference_steps"]
        size = f"{frames}x{shown['height']}x{shown['width']}, {steps} steps"
        print(f"{size:<38} {wall:7.2f} {cpu:7.2f} {sum(timings.steps_s):9.2f} {timings.decode_s:9.2f}")


if __name__ == "__main__":
    main()
