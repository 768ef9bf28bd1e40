#!/usr/bin/env bash
# Everything this project checks on a GPU, in one pass (a lent GPU machine's short session, or any CUDA
# host with this checkout and a CUDA torch):
#   1. the CUDA tests (tests/test_cuda.py: packed layouts against padded rows, bf16 autocast, the gpu
#      trainer config's bf16-mixed + clipping + fused AdamW on the GPU);
#   2. the throughput benchmark on CUDA in bf16-mixed at SmolLM2-135M's shape, against TRL
#      (benchmarks/throughput.py --device cuda);
#   3. benchmarks/step_profile.py on a variable-length step, ours (packed; also without cuDNN attention)
#      and TRL's: where the time goes;
#   4. scripts/gpu_check.sh: real runs of src/run.py (trainer=gpu) on a SmolLM2-135M-shaped model with
#      random weights (scripts/smollm2_shape.py; its speed and memory are SmolLM2's, its losses not).
# Environment: PARTS (default "tests bench profile gpu_check": which parts to run), PY (default python3),
# OUT (default outputs/gpu_device_check), SMOLLM2 (a folder from
# `python scripts/smollm2_shape.py export DIR`, default .gpu/smollm2_shape), WHEELS (a folder of wheels to
# install to /tmp/site first, for a host whose python has torch but not the rest; default .whl).
# Writes env.log, tests.log, bench.log, bench.json, profile.log, gpu_check.log and gpu_check_runs.log to $OUT; exits 1
# when any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-outputs/gpu_device_check}
SMOLLM2=${SMOLLM2:-.gpu/smollm2_shape}
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
failed=0
part() {  # part NAME SECONDS COMMAND...: runs with a time limit, its output in $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   $name: exit $rc after $((SECONDS - start))s"
  [ "$rc" = 0 ] || failed=1
}

{ nvidia-smi -L; "$PY" -c "import torch, transformers, lightning, trl
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))
print('transformers', transformers.__version__, 'lightning', lightning.__version__, 'trl', trl.__version__)"
} > "$OUT/env.log" 2>&1
cat "$OUT/env.log"

want() { [[ " ${PARTS:-tests bench profile gpu_check} " == *" $1 "* ]]; }

want tests && part tests 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py -s
want tests && tail -3 "$OUT/tests.log"

want bench && part bench "${BENCH_LIMIT:-240}" "$PY" benchmarks/throughput.py --device cuda --precision bf16-mixed \
  --models smollm2-shape --lengths variable,fixed --batch-size 16 --pack off \
  --losses dpo,dpo+pack,simpo,simpo+pack,dpo+cache+pack --impls trl,trl-tuned --rounds 4 --steps 5 \
  --json "$OUT/bench.json"
want bench && sed -n '/^model /,$p' "$OUT/bench.log"

profiles() {  # PROFILE_DEVICE / PROFILE_MODEL: for a dry run on a CPU
  set -o pipefail
  for spec in "ours dpo+pack" "trl dpo" "ours dpo+pack --no-cudnn-attention"; do
    read -r impl loss flag <<< "$spec"
    echo "==== $impl $loss ${flag:-} variable lengths, batch 16"
    "$PY" benchmarks/step_profile.py --device "${PROFILE_DEVICE:-cuda}" --model "${PROFILE_MODEL:-smollm2-shape}" \
      --impl "$impl" --loss "$loss" --lengths variable --batch-size 16 --rows 30 ${flag:-} 2>&1 \
      | grep -v "^USDT" | sed -n '/Self CPU %/,$p' || return 1
  done
}
export -f profiles
export PY
want profile && part profile 150 bash -c profiles
want gpu_check || exit "$failed"

"$PY" scripts/smollm2_shape.py build "$SMOLLM2" /tmp/smollm2_shape > /dev/null 2>&1 || failed=1
part gpu_check "${CHECK_LIMIT:-200}" env PY="$PY" OUT=/tmp/gpu_check STEPS="${STEPS:-100}" \
  LOSSES="${LOSSES:-dpo simpo rmipo}" RUN_ARGS="model.path=/tmp/smollm2_shape" bash scripts/gpu_check.sh
cat "$OUT/gpu_check.log"
for log in /tmp/gpu_check/*.log; do echo "== $log"; grep -v "^\s*$" "$log" | tail -25; done > "$OUT/gpu_check_runs.log" 2>&1
exit "$failed"
