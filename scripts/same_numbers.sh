#!/usr/bin/env bash
# Runs seven short sort configurations (DPO, RMiPO with each marginal, SimPO, IPO with a live reference,
# DPO+LoRA, DPO packed) from a checkout, so a refactor can be checked to leave every metric unchanged:
#   scripts/same_numbers.sh <old checkout> /tmp/old && scripts/same_numbers.sh . /tmp/new
#   .venv/bin/python scripts/compare_runs.py /tmp/old /tmp/new      # exit 1 if any metric differs
# Both checkouts run with this checkout's .venv and share one artifact cache (PREFOPT_CACHE).
set -euo pipefail
repo=$(cd "$1" && pwd); out=$2; here=$(cd "$(dirname "$0")/.." && pwd)
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PREFOPT_CACHE=${PREFOPT_CACHE:-$here/.cache/prefopt}
run() { local name=$1; shift; (cd "$repo" && "$here/.venv/bin/python" src/run.py data=sort "$@" hydra.run.dir="$out/$name" > "$out.$name.log" 2>&1); }
mkdir -p "$out"
run dpo loss=dpo loss.beta=1.0 optim.lr=1e-4 trainer.max_steps=60
run rmipo loss=rmipo loss.beta=2.0 optim.lr=1e-4 trainer.max_steps=60
run rmipo_ref loss=rmipo loss.beta=2.0 loss.marginal=reference optim.lr=1e-4 trainer.max_steps=60
run simpo loss=simpo loss.beta=2.0 optim.lr=1e-4 trainer.max_steps=60
run ipo_live loss=ipo loss.beta=1.0 optim.lr=1e-4 trainer.max_steps=60 logp_cache=false
run dpo_lora loss=dpo loss.beta=1.0 optim.lr=1e-4 trainer.max_steps=30 model.lora.r=8
run packed loss=dpo loss.beta=1.0 optim.lr=1e-4 trainer.max_steps=60 data.pack=true
