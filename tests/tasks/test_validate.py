"""GX advisories over a valid batch: values the model accepts that rarely give a good result."""

from cosmos_pipeline.request import GenerationRequest
from tasks.expectations import failures
from tasks.validate import advise


def test_advisories_flag_what_rarely_works_and_pass_the_defaults() -> None:
    requests = [
        GenerationRequest(prompt="a robot", height=256, width=448),
        GenerationRequest(prompt="a robot", guidance_scale=50, num_inference_steps=500, height=64, width=112),
    ]
    result = advise(requests).result(timeout=300)
    flagged = {(failure.field, row) for failure in failures(result) for row in failure.rows}
    assert flagged == {("guidance", 2), ("num_steps", 2), ("resolution", 2)}
