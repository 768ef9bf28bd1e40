#!/usr/bin/env bash
# Single-GPU check: trains model=smollm2_135m (real SmolLM2-135M-Instruct weights, bf16 mixed precision)
# for STEPS steps with each loss on a preference set built from the embedded sort task, and prints
# pairs/s, tokens/s, peak GPU memory and model-FLOPs utilisation per loss (from each run's results.json).
#   bash scripts/gpu_check.sh            # STEPS=300 BATCH=32 by default
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-300}
BATCH=${BATCH:-32}
OUT=${OUT:-outputs/gpu_check}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no GPU visible'; print('GPU:', torch.cuda.get_device_name(0))"

# the sort task's pairs (built once and cached), as a jsonl file any model can train on
PAIRS=$("$PY" - <<'PYEOF'
from pathlib import Path
from hydra import compose, initialize_config_dir
from prefopt.config import build_component
with initialize_config_dir(config_dir=str(Path("conf").resolve()), version_base="1.3"):
    cfg = compose(config_name="train", overrides=["data=sort", "model=tiny"])
import os
root = Path(os.environ.get("PREFOPT_CACHE", ".cache/prefopt")).resolve()
build_component(cfg.data.source, "data.source").build(cfg.model, root)
print(next(root.glob("sort_pairs/*/pairs.jsonl")))
PYEOF
)
echo "pairs: $PAIRS"
for LOSS in dpo ipo simpo rmipo; do
  "$PY" src/run.py model=smollm2_135m trainer=gpu data=jsonl data.path="$PAIRS" loss=$LOSS \
    trainer.max_steps=$STEPS data.batch_size=$BATCH data.max_length=64 data.max_prompt_length=32 \
    logger=none checkpoint.enabled=false hydra.run.dir="$OUT/$LOSS" > "$OUT-$LOSS.log" 2>&1 \
    || { echo "$LOSS failed: see $OUT-$LOSS.log"; tail -20 "$OUT-$LOSS.log"; continue; }
done
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
print(f"{'loss':<8}{'pairs/s':>10}{'tokens/s':>12}{'peak MB':>10}{'MFU':>8}")
for loss in ("dpo", "ipo", "simpo", "rmipo"):
    f = Path(sys.argv[1]) / loss / "results.json"
    if not f.exists():
        print(f"{loss:<8} no results"); continue
    m = json.loads(f.read_text())["metrics"]
    print(f"{loss:<8}{m.get('perf/pairs_per_s', 0):>10.1f}{m.get('perf/tokens_per_s', 0):>12.0f}"
          f"{m.get('perf/peak_mem_mb', 0):>10.0f}{m.get('perf/mfu', float('nan')):>8.3f}")
PYEOF
