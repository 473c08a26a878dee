#!/bin/bash
# One GPU call of the toy-world recipe (TOYWORLD.md, attempt 4), run by the device tool with
# .whl-train and $CKPT carried: install the wheels, train $CKPT until $DEADLINE s after this script
# started ($ARGS: train_toyworld.py's options), then, once the LoRA exists and $EVAL_END is set,
# export, save sample frames and evaluate until $EVAL_END s; tar $CKPT and the export to $OUT in
# 15 MB pieces (16 MB per file comes back).
T0=$(date +%s)
CKPT=${CKPT:-.toyworld/run3}
EXPORT=${EXPORT:-.toyworld/export4}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-train/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -c 'import torch, diffusers; print(torch.__version__, torch.cuda.get_device_name(), diffusers.__version__)' || exit 1
echo "setup $(( $(date +%s) - T0 )) s"
if [ -n "$DEADLINE" ]; then
  left=$(( DEADLINE - ($(date +%s) - T0) ))
  timeout $(( left + 30 )) python3 scripts/train_toyworld.py --checkpoints $CKPT --device cuda --deadline $left $ARGS > $OUT/train.log 2>&1
  echo "train rc $? at $(( $(date +%s) - T0 )) s"
fi
grep -v "Loading weights\|Writing model" $OUT/train.log | tail -40
if [ -n "$EVAL_END" ] && ls $CKPT/lora/*.safetensors >/dev/null 2>&1; then
  mkdir -p /tmp/extra
  python3 scripts/train_toyworld.py --checkpoints $CKPT --export $EXPORT > /tmp/extra/export.log 2>&1
  echo "export rc $? at $(( $(date +%s) - T0 )) s"
  timeout 120 python3 benchmarks/toyworld/sample_frames.py --model_root $EXPORT --device cuda --out /tmp/extra/frames \
      --sets heldout domain pre-heldout --count 3 > /tmp/extra/frames.log 2>&1
  echo "frames rc $? at $(( $(date +%s) - T0 )) s"; grep '^{' /tmp/extra/frames.log
  left=$(( EVAL_END - ($(date +%s) - T0) ))
  timeout $left python3 scripts/evaluate_toyworld.py --device cuda --model_root $EXPORT --interleave $EVAL_ARGS > $OUT/eval.log 2>&1
  echo "eval rc $? at $(( $(date +%s) - T0 )) s"
  tail -n 12 $OUT/eval.log
  tar czf $OUT/extra.tgz -C /tmp extra
fi
tar czf - $CKPT $( [ -d $EXPORT ] && echo $EXPORT ) 2>/dev/null | split -b 15m - $OUT/ckpt.tgz.
ls -la $OUT; echo "end $(( $(date +%s) - T0 )) s"
