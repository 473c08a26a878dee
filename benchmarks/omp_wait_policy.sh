#!/usr/bin/env bash
# OpenMP's idle threads spinning a while (libgomp's default; set empty here, as tests/conftest.py sets
# PASSIVE only where it is unset) or sleeping (OMP_WAIT_POLICY=PASSIVE), on a part of the suite that generates
# in many torch processes at once: wall time and the whole machine's busy CPU (benchmarks/cpu_use.sh), the
# two alternating, ROUNDS times. Run on an idle machine:
#   bash benchmarks/omp_wait_policy.sh [ROUNDS]
set -u
cd "$(dirname "$0")/.."
files=(tests/cosmos_pipeline/test_generate.py tests/cosmos_pipeline/test_native.py tests/flows/test_generate.py
       tests/cosmos_pipeline/test_lora.py tests/cosmos_pipeline/test_long_video.py tests/flows/test_batch.py)
for _ in $(seq "${1:-2}"); do
  for policy in "" PASSIVE; do
    line=$(OMP_WAIT_POLICY=$policy bash benchmarks/cpu_use.sh env -u PYTHONDONTWRITEBYTECODE \
      .venv/bin/python -m pytest -q -n 2 --dist loadfile -p no:cacheprovider "${files[@]}" 2>&1 | tail -1)
    echo "${policy:-default}: $line"
  done
done
