"""Device slots across real processes: held while generating, free the moment the holder ends however it
ends (SIGKILL included), and a waiting run says who holds the GPU and how to free it."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cosmos_pipeline.slots import SlotTimeoutError, device_slot, gpu_ids, slot_names

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cosmos_pipeline.slots import device_slot
    with device_slot(["0"], Path(sys.argv[1]), what="holder under test"):
        print("held", flush=True)
        time.sleep(600)
    """
)


def holder(slot_dir: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(slot_dir)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_gpus_are_named_by_their_physical_id(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpu_ids("cpu", None, 0) == []  # the CPU takes no slot
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpu_ids("cuda:1", None, 2) == ["3"] and gpu_ids("cuda", None, 2) == ["2"]
    assert gpu_ids("cuda", "balanced", 2) == ["2", "3"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_ids("cuda", "balanced", 2) == ["0", "1"]
    assert slot_names(["3"])[0].endswith("-3")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_slot_is_free_as_soon_as_its_holder_dies(tmp_path: Path, signum: int) -> None:
    process = holder(tmp_path)
    with pytest.raises(SlotTimeoutError):  # held
        with device_slot(["0"], tmp_path, timeout_s=0.3):
            pass
    process.send_signal(signum)
    process.wait(timeout=30)
    start = time.monotonic()
    with device_slot(["0"], tmp_path, timeout_s=5) as held:
        assert held == slot_names(["0"])
    assert time.monotonic() - start < 2  # at once: no lease to run out


def test_a_waiting_run_says_who_holds_the_gpu_and_how_to_free_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    process = holder(tmp_path)
    try:
        with pytest.raises(SlotTimeoutError) as refused:
            with device_slot(["0"], tmp_path, timeout_s=1.0):
                pass
    finally:
        process.kill()
        process.wait()
    message = str(refused.value)
    assert (
        f"held by pid {process.pid}" in message and "holder under test" in message and "since 20" in message
    )
    assert "kill <pid>" in message and "gpu_wait_timeout_s" in message
    assert f"held by pid {process.pid}" in caplog.text  # said while waiting, not only at the end


def test_slots_per_gpu_admit_that_many_and_a_sharded_run_takes_every_gpu(tmp_path: Path) -> None:
    process = holder(tmp_path)
    try:
        with device_slot(["0"], tmp_path, slots_per_gpu=2, timeout_s=1.0):
            with pytest.raises(SlotTimeoutError):
                with device_slot(["0", "1"], tmp_path, slots_per_gpu=2, timeout_s=0.5):
                    pass
        with device_slot(["1", "0"], tmp_path, slots_per_gpu=2, timeout_s=1.0) as held:
            assert held == slot_names(["0", "1"])
    finally:
        process.kill()
        process.wait()
    assert all(os.stat(path).st_mode & 0o666 == 0o666 for path in tmp_path.glob("*.lock"))
