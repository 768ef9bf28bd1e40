#!/usr/bin/env bash
# GPU smoke and speed check: trains each loss for STEPS steps on a preference set built from the embedded
# sort task and prints pairs/s, tokens/s, peak memory and model-FLOPs utilisation (MFU) per loss, read
# from each run's results.json, plus the device/precision/attention line of the runs.
#   bash scripts/gpu_check.sh          # one GPU: model=smollm2_135m in bf16 mixed precision, STEPS=300 BATCH=32
#   bash scripts/gpu_check.sh --cpu    # the same steps on the CPU with model=tiny, STEPS=8 BATCH=8 (CI)
# Environment: PY (python, default .venv/bin/python), OUT (folder, default outputs/gpu_check), STEPS,
# BATCH, LOSSES (default "dpo ipo simpo rmipo"), RUN_ARGS (more overrides for every run, e.g.
# "model.path=/models/SmolLM2-135M"). Logs go to $OUT/<step>.log; exit status 1 when any step fails.
# Tested by tests/test_gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
for arg in "$@"; do
  case "$arg" in
    --cpu) MODE=cpu ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$arg' (only --cpu)" >&2; exit 2 ;;
  esac
done
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/gpu_check}
LOSSES=${LOSSES:-dpo ipo simpo rmipo}
read -r -a EXTRA <<< "${RUN_ARGS:-}"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
[ -x "$PY" ] || command -v "$PY" >/dev/null || { echo "gpu_check: no python at $PY (run make install, or set PY=)" >&2; exit 1; }

if [ "$MODE" = gpu ]; then
  STEPS=${STEPS:-300}; BATCH=${BATCH:-32}
  "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || {
    echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); use --cpu to run the same steps on the CPU" >&2
    exit 1
  }
  RUN=(model=smollm2_135m trainer=gpu)
  PAIRS_ARGS=()
else
  STEPS=${STEPS:-8}; BATCH=${BATCH:-8}
  RUN=(model=tiny trainer=cpu threads=1)
  # a small sort task (the test suite builds the same one, so its cache is shared)
  PAIRS_ARGS=(data.source.n_sft=3000 data.source.sft_steps=150 data.source.n_pair_prompts=300 data.source.n_eval_prompts=48)
fi
mkdir -p "$OUT"
echo "gpu_check ($MODE): $STEPS steps, batch $BATCH, losses: $LOSSES; logs in $OUT/"

# the pairs file is written to a path we choose (not captured from output, which is log)
PAIRS="$OUT/pairs.jsonl"
"$PY" scripts/gpu_check_pairs.py "$PAIRS" "${PAIRS_ARGS[@]}" > "$OUT/pairs.log" 2>&1 || {
  echo "gpu_check: building the pairs failed; last lines of $OUT/pairs.log:" >&2
  tail -15 "$OUT/pairs.log" >&2
  exit 1
}

failed=0
for LOSS in $LOSSES; do
  rm -rf "${OUT:?}/$LOSS"  # a completed run folder would be skipped, showing old numbers
  if "$PY" src/run.py "${RUN[@]}" data=jsonl data.path="$PAIRS" loss="$LOSS" trainer.max_steps="$STEPS" \
      data.batch_size="$BATCH" data.max_length=64 data.max_prompt_length=32 logger=none \
      checkpoint.enabled=false hydra.run.dir="$OUT/$LOSS" "${EXTRA[@]}" > "$OUT/$LOSS.log" 2>&1; then
    echo "  $LOSS: done"
  else
    failed=1
    echo "  $LOSS: failed; last lines of $OUT/$LOSS.log:" >&2
    tail -10 "$OUT/$LOSS.log" >&2
  fi
done

# shellcheck disable=SC2086  # LOSSES is a word list
"$PY" scripts/gpu_check_report.py "$OUT" $LOSSES || failed=1
exit "$failed"
