"""Where a command's CPU goes, by kind of process: run it, sample every process's CPU from /proc four times a
second, and add up each process's CPU by what its command line says it is (a Prefect server, a warm worker,
a flow-run process, GX's shared process...). For `make test` (README "Tests"):

    python benchmarks/suite_profile.py --out /tmp/profile.json -- .venv/bin/python -m pytest -q -n 2 \\
        --dist loadfile --no-loadscope-reorder

Every process on the machine is sampled, so run it on an otherwise idle one. A process that lives less than
a quarter of a second can be missed; the sampler's own CPU is not counted.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# First match wins: the more specific patterns come first ("cosmos-warm-" is also in GX's socket path).
KINDS = [
    ("tasks.gx_process", "GX's shared process"),
    ("server database upgrade", "the tests' Prefect database migration"),
    ("diffusers_inference.py", "the seed script (a command)"),
    ("cosmos-generate", "cosmos-generate"),
    ("cosmos-evaluate", "cosmos-evaluate"),
    ("cosmos-sync", "cosmos-sync"),
    ("flows.daemon", "the command line's warm process"),
    ("tasks.warm", "warm worker"),
    ("prefect.engine", "flow-run process"),
    ("scripts/stack.py", "scripts/stack.py"),
    ("multiprocessing.spawn", "multiprocessing child"),
    ("resource_tracker", "multiprocessing resource tracker"),
    ("worker start", "Prefect process worker"),
    ("prefect server start", "Prefect server (prefect server start)"),
    ("prefect.server.api.server:create_app", "Prefect server (uvicorn: test harness, temporary)"),
    ("mlflow.server", "MLflow server (uvicorn)"),
    ("mlflow server", "MLflow server (launcher)"),
    ("prefect --no-prompt deploy", "prefect deploy"),
    ("work-pool create", "prefect work-pool create"),
    ("exec(eval(sys.stdin.readline()))", "pytest-xdist worker"),
    ("-m pytest", "pytest"),
    ("postgres", "PostgreSQL"),
    ("moto", "moto (S3 server)"),
    ("ffmpeg", "ffmpeg"),
]


def kind(command: str) -> str:
    return next((name for pattern, name in KINDS if pattern in command), command[:80] or "(no command line)")


def sample(seen: dict, me: int, tick: int, before: bool = False) -> None:
    """Each process's CPU now; one first seen `before` the command counts from here, a new one from 0."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            command = raw.replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        key = (entry, fields[19])  # pid and start time: a reused pid is another process
        cpu = (int(fields[11]) + int(fields[12])) / tick
        first, old_command = seen.get(key, (cpu if before else 0.0, ""))[0:2]
        seen[key] = (first, command.strip() or old_command, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="the per-kind figures as JSON")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    seen: dict = {}
    me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
    sample(seen, me, tick, before=True)  # what already runs: only its CPU from now on counts
    started = time.monotonic()
    process = subprocess.Popen(command)
    while process.poll() is None:
        sample(seen, me, tick)
        time.sleep(0.25)
    sample(seen, me, tick)
    by_kind: dict = collections.defaultdict(lambda: {"cpu_s": 0.0, "processes": 0})
    for first, name, last in seen.values():
        if last > first:
            row = by_kind[kind(name)]
            row["cpu_s"] += last - first
            row["processes"] += 1
    rows = sorted(by_kind.items(), key=lambda item: -item[1]["cpu_s"])
    total = sum(row["cpu_s"] for _, row in rows)
    print(f"\nwall {time.monotonic() - started:.0f} s, {total:.0f} CPU-s in all, exit {process.returncode}")
    for name, row in rows[:30]:
        print(f"{row['cpu_s']:8.1f} CPU-s {row['processes']:5d} processes  {name}")
    if args.out:
        args.out.write_text(json.dumps({"total_cpu_s": total, "kinds": dict(rows)}, indent=1) + "\n")
    sys.exit(process.returncode)


if __name__ == "__main__":
    main()
