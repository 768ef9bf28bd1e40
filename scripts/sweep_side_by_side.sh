#!/usr/bin/env bash
# Times the sort β study's main grid at one seed (60 runs: each loss over its 5 β × 3 lr of
# conf/sweep/beta_sensitivity.yaml, two joblib workers) in an older checkout and in this one, arms
# alternating (old, new, new with data.pack=true; REPS times), and checks that every run's oracle reward
# is the same in every arm:
#   git worktree add /tmp/old <commit> && scripts/sweep_side_by_side.sh /tmp/old /tmp/side_by_side
# The grid is given as plain overrides (loss.beta, optim.lr), so a checkout from before the sweep
# config's grid existed runs the same 60 runs. Each checkout keeps its own artifact cache (the old one
# under <out>/old_cache, built by one warm-up run per loss first; this one's under PREFOPT_CACHE or
# .cache/prefopt), so both arms start warm. Writes <out>/walls.txt and prints the summary.
# LOSSES="dpo" REPS=1 for a short check. Uses this checkout's .venv for both.
set -euo pipefail
old=$(cd "$1" && pwd); out=$2; here=$(cd "$(dirname "$0")/.." && pwd)
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
grids=$("$here/.venv/bin/python" "$here/scripts/sweep_side_by_side.py" --grid)  # "<loss> <overrides>" lines
REPS=${REPS:-2}; LOSSES=${LOSSES:-$(cut -d' ' -f1 <<< "$grids" | tr '\n' ' ')}
new_cache=${PREFOPT_CACHE:-$here/.cache/prefopt}; old_cache=$out/old_cache
mkdir -p "$out"

grid() {  # the main grid of conf/sweep/beta_sensitivity.yaml for loss $1, as plain overrides
  sed -n "s/^$1 //p" <<< "$grids"
}

py() { (cd "$1" && PREFOPT_CACHE=$2 "$here/.venv/bin/python" src/run.py "${@:3}"); }

warm() {  # one short run per loss builds the checkout's task artifacts, log-prob tables and evaluation cache
  for loss in $LOSSES; do
    py "$1" "$2" data=sort loss="$loss" seed=0 trainer.max_steps=5 checkpoint.enabled=false \
      hydra.run.dir="$out/warm/$3/$loss" > "$out/warm_$3_$loss.log" 2>&1
  done
}

arm() {  # $1 arm name, $2 checkout, $3 cache, then extra overrides
  local name=$1 repo=$2 cache=$3; shift 3
  rm -rf "${out:?}/$name"; mkdir -p "$out/$name"
  local start; start=$(date +%s.%N)
  for loss in $LOSSES; do
    # shellcheck disable=SC2046  # the grid is several overrides
    py "$repo" "$cache" -m data=sort loss="$loss" $(grid "$loss") seed=0 trainer.max_steps=200 \
      checkpoint.enabled=false hydra/launcher=joblib "$@" hydra.sweep.dir="$out/$name/$loss" \
      > "$out/$name/$loss.log" 2>&1
  done
  echo "$name $(echo "$(date +%s.%N) - $start" | bc)" | tee -a "$out/walls.txt"
}

warm "$old" "$old_cache" old
warm "$here" "$new_cache" new
: > "$out/walls.txt"
for rep in $(seq "$REPS"); do
  arm "old-$rep" "$old" "$old_cache"
  arm "new-$rep" "$here" "$new_cache"
  arm "pack-$rep" "$here" "$new_cache" data.pack=true
done
"$here/.venv/bin/python" "$here/scripts/sweep_side_by_side.py" "$out"
