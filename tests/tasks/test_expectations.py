"""GX's helper process ends with its parent, even when the parent is killed outright and never stops it."""

import signal
import subprocess
import sys
import textwrap
import time

from tests.flows.test_interrupts import alive

PARENT = textwrap.dedent(
    """
    import os, time
    from tasks import expectations
    print(expectations.start().submit(os.getpid).result(), flush=True)  # the helper's pid, once it runs
    time.sleep(600)
    """
)


def test_the_helper_ends_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    helper = int(parent.stdout.readline())
    assert alive(helper)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while alive(helper) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(helper)
