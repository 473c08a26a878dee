"""The generate task's retry rule, with a real Prefect task for the retries."""

import pytest
import torch
from huggingface_hub.errors import RepositoryNotFoundError
from prefect import flow, task

from cosmos_pipeline.errors import GuardrailUnavailableError, InputError
from cosmos_pipeline.generate import UnsafeContentError
from cosmos_pipeline.media import OutputExistsError
from tasks.generate import RETRIES, generate_video, is_transient, retry_on_transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionError("reset"), True),
        (TimeoutError("slow hub"), True),
        (OSError("I/O error"), True),
        (InputError("bad"), False),
        (OutputExistsError("exists"), False),  # an InputError that is also an OSError
        (UnsafeContentError("refused"), False),
        (GuardrailUnavailableError("missing"), False),
        (torch.OutOfMemoryError("CUDA out of memory"), False),
        (FileNotFoundError("gone"), False),
        (RuntimeError("shape mismatch"), False),
    ],
)
def test_only_transient_errors_are_retried(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_a_missing_hub_repo_is_not_retried() -> None:
    response = type("Response", (), {"headers": {}, "status_code": 404, "request": None, "url": "x"})()
    assert not is_transient(RepositoryNotFoundError("no such repo", response=response))


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(("error", "calls"), [(ConnectionError, 3), (InputError, 1)])
def test_prefect_retries_transient_errors_only(error: type[Exception], calls: int) -> None:
    attempts = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_on_transient)
    def flaky() -> None:
        attempts.append(1)
        raise error("boom")

    @flow
    def run() -> None:
        flaky()

    with pytest.raises(error):
        run()
    assert len(attempts) == calls


def test_retries_are_declared_on_the_task() -> None:
    assert generate_video.retries == RETRIES and generate_video.retry_condition_fn is retry_on_transient
