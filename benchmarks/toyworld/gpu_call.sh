#!/bin/bash
# One GPU call of the toy-world recipe (TOYWORLD.md, attempt 4), run by the device tool with
# .whl-train and $CKPT carried: install the wheels, train $CKPT until $DEADLINE s after this script
# started ($ARGS: train_toyworld.py's options), then, once the LoRA exists and $EVAL_END is set,
# export, save sample frames and evaluate until $EVAL_END s; tar $CKPT and the export to $OUT in
# 15 MB pieces (16 MB per file comes back).
# Attempt 5 added: $KEEP, a folder outside the tree where the trained $CKPT is copied at the end, and
# from which a later call on the still-warm machine takes it when the carried $CKPT has fewer stages
# done (the 30 s between two calls may be too short to unpack the tar here); $PRESET, the acceleration
# preset of the frames and the evaluation (plain: the GPU's default gives NaN with this model); and
# NO_FAST=1, which leaves the fast-mode cases (NaN on the GPU) out of the evaluation.
# Attempt 5's second try added: the export and the frames are stopped by `timeout` before $EVAL_END
# too, and SLIM=1 leaves the stages that a call does not train (text, vae) out of the returned tar.
T0=$(date +%s)
CKPT=${CKPT:-.toyworld/run3}
EXPORT=${EXPORT:-.toyworld/export4}
PRESET=${PRESET:-default}
export PYTHONUNBUFFERED=1
done_stages() { local n; n=$(grep -c '"done": true' "$1/state.json" 2>/dev/null); echo ${n:-0}; }
if [ -n "$KEEP" ] && [ "$(done_stages $KEEP)" -gt "$(done_stages $CKPT)" ]; then
  echo "taking $CKPT from $KEEP ($(done_stages $KEEP) stages done against $(done_stages $CKPT) carried)"
  rm -rf $CKPT && cp -a $KEEP $CKPT
fi
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
  left=$(( EVAL_END - ($(date +%s) - T0) ))
  timeout $(( left > 5 ? left : 5 )) python3 scripts/train_toyworld.py --checkpoints $CKPT --export $EXPORT > /tmp/extra/export.log 2>&1
  echo "export rc $? at $(( $(date +%s) - T0 )) s"
  left=$(( EVAL_END - ($(date +%s) - T0) - 30 ))
  timeout $(( left < 120 ? (left > 5 ? left : 5) : 120 )) python3 benchmarks/toyworld/sample_frames.py --model_root $EXPORT --device cuda --out /tmp/extra/frames \
      --sets heldout domain pre-heldout --count 3 --preset $PRESET > /tmp/extra/frames.log 2>&1
  echo "frames rc $? at $(( $(date +%s) - T0 )) s"; grep '^{' /tmp/extra/frames.log
  left=$(( EVAL_END - ($(date +%s) - T0) ))
  CASES=()
  [ "$NO_FAST" = 1 ] && CASES=(--cases "held-out, post-trained" "held-out, post-trained, guidance 1" "held-out, pre-trained" \
      "two objects, post-trained" "two objects, pre-trained" "Image2World, post-trained")
  timeout $(( left > 1 ? left : 1 )) python3 scripts/evaluate_toyworld.py --device cuda --model_root $EXPORT --interleave --preset $PRESET \
      "${CASES[@]}" $EVAL_ARGS > $OUT/eval.log 2>&1
  echo "eval rc $? at $(( $(date +%s) - T0 )) s"
  tail -n 12 $OUT/eval.log
  tar czf $OUT/extra.tgz -C /tmp extra
fi
[ -n "$KEEP" ] && rm -rf $KEEP && mkdir -p $(dirname $KEEP) && cp -a $CKPT $KEEP
SKIP=()
[ "$SLIM" = 1 ] && SKIP=(--exclude "$CKPT/text" --exclude "$CKPT/vae" --exclude "$CKPT/vae-raw" --exclude "$CKPT/vae.pt")
tar czf - "${SKIP[@]}" $CKPT $( [ -d $EXPORT ] && echo $EXPORT ) 2>/dev/null | split -b 15m - $OUT/ckpt.tgz.
ls -la $OUT; echo "end $(( $(date +%s) - T0 )) s"
