#!/usr/bin/env bash
# How long `scripts/stack.py down` takes to stop a whole idle stack (`up --gpus 2`: the two servers on SQLite,
# two process workers, two warm workers), in a temporary folder on free loopback ports. Run from the
# repository root after `make install`; to compare with another commit's script, pass a copy of it, kept
# under scripts/ (it finds the repository from its own path):
#   git show 15a8269:scripts/stack.py > scripts/stack_old.py
#   for i in 1 2; do bash benchmarks/stack_down.sh scripts/stack_old.py; bash benchmarks/stack_down.sh; done
set -eu
script=${1:-scripts/stack.py}
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
export PREFECT_HOME=$d/prefect-home COSMOS_CACHE_DIR=$d/cache
port() { .venv/bin/python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
ports=(--prefect-port "$(port)" --mlflow-port "$(port)")
.venv/bin/python "$script" up --gpus 2 --dir "$d/state" "${ports[@]}" > "$d/up.log" 2>&1 || { tail "$d/up.log"; exit 1; }
sleep 3
start=$(date +%s.%N)
.venv/bin/python "$script" down --dir "$d/state" "${ports[@]}" > "$d/down.log" 2>&1
echo "$script: down took $(echo "$(date +%s.%N) - $start" | bc) s; $(grep -c stopped "$d/down.log") services stopped"
