#!/bin/bash
# The last GPU call of attempt 4 (TOYWORLD.md): which acceleration lever makes the GPU's output NaN
# (nan_check.py), then the evaluation with the plain preset until $EVAL_END s; results to $OUT.
T0=$(date +%s)
EXPORT=${EXPORT:-.toyworld/export4}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-train/*.whl || exit 1
export PYTHONPATH=/tmp/site
timeout ${NAN_S:-70} python3 benchmarks/toyworld/nan_check.py --model_root $EXPORT --device cuda \
    --variants plain default "default, compile off" "default, attention sdpa" "plain, attention cudnn" "plain, compile on" > $OUT/nan.log 2>&1
echo "nan_check rc $? at $(( $(date +%s) - T0 )) s"; grep '^{' $OUT/nan.log
left=$(( EVAL_END - ($(date +%s) - T0) ))
timeout $left python3 scripts/evaluate_toyworld.py --device cuda --model_root $EXPORT --interleave --preset plain $EVAL_ARGS > $OUT/eval.log 2>&1
echo "eval rc $? at $(( $(date +%s) - T0 )) s"
grep -c '^{' $OUT/eval.log
echo "end $(( $(date +%s) - T0 )) s"
