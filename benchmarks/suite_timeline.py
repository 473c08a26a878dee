"""When each test file ran on which pytest worker, and when the machine's cores idled: run pytest with this
module as a plugin while sampling /proc/stat every second, then print each worker's files in order (start,
end, seconds) and the idle cores in 10-second buckets. For `make test`'s pytest (README "Tests"):

    python benchmarks/suite_timeline.py -- .venv/bin/python -m pytest -q -n 2 --dist loadfile \\
        --no-loadscope-reorder

Idle cores where both workers wait at once (servers starting, a killed worker's silence) are time that
ordering the files can win back. Run it on an otherwise idle machine: other load shows as busy.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LOG = "SUITE_TIMELINE_LOG"  # the folder the plugin writes each worker's log to


# ----------------------------------------------------------------------------- the plugin (each worker)


def _write(event: str, nodeid: str) -> None:
    folder = os.environ.get(LOG)
    if folder:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(Path(folder) / f"{worker}.jsonl", "a") as log:
            log.write(json.dumps({"event": event, "id": nodeid, "t": time.time()}) + "\n")


def pytest_runtest_logstart(nodeid: str, location) -> None:
    _write("start", nodeid)


def pytest_runtest_logfinish(nodeid: str, location) -> None:
    _write("end", nodeid)


# ----------------------------------------------------------------------------- the script


def busy_and_total() -> tuple[int, int]:
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)  # idle and iowait are not busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the pytest command, after --")
    command = parser.parse_args().command
    command = command[1:] if command[:1] == ["--"] else command
    folder = Path(tempfile.mkdtemp(prefix="suite-timeline-"))
    samples: list[tuple[float, int, int]] = []
    done = threading.Event()

    def sample() -> None:
        while True:
            samples.append((time.time(), *busy_and_total()))
            if done.wait(1.0):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    env = os.environ | {LOG: str(folder), "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
    code = subprocess.run([*command, "-p", Path(__file__).stem], env=env).returncode
    done.set()
    sampler.join()

    def idle_cores(start: float, end: float) -> float:
        inside = [s for s in samples if start <= s[0] <= end]
        if len(inside) < 2:
            return float("nan")
        busy, total = inside[-1][1] - inside[0][1], inside[-1][2] - inside[0][2]
        return (total - busy) / os.sysconf("SC_CLK_TCK") / (inside[-1][0] - inside[0][0])

    spans: dict[str, dict[str, list[float]]] = {}
    for log in sorted(folder.glob("*.jsonl")):
        files: dict[str, list[float]] = {}
        for line in log.read_text().splitlines():
            event = json.loads(line)
            span = files.setdefault(event["id"].split("::")[0], [event["t"], event["t"]])
            span[1] = max(span[1], event["t"])
        spans[log.stem] = files
    shutil.rmtree(folder)
    if len(spans) > 1:
        spans.pop("main", None)  # xdist's controller, which hears of every worker's tests
    if not spans:
        sys.exit(f"no test ran ({code})")
    begin = min(span[0] for files in spans.values() for span in files.values())
    end = max(span[1] for files in spans.values() for span in files.values())
    print(f"\n{end - begin:.0f} s from the first test's start to the last one's end; exit {code}")
    for worker, files in spans.items():
        print(worker)
        for name, (start, stop) in files.items():
            print(f"  {start - begin:5.0f} to {stop - begin:5.0f}  {stop - start:6.1f} s  {name}")
    buckets = [f"{k * 10}:{idle_cores(begin + k * 10, begin + k * 10 + 10):.1f}"
               for k in range(int((end - begin) // 10) + 1)]  # fmt: skip
    print("idle cores, by 10 s from the first test's start:\n" + " ".join(buckets))
    sys.exit(code)


if __name__ == "__main__":
    main()
