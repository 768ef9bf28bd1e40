#!/usr/bin/env bash
# The one prepared script for a lent GPU machine (issue 31): under 8 minutes of device time, everything
# written to $OUT with the command that made it. Phases, in order, each with its own time limit:
#   env    nvidia-smi, torch/transformers/lightning/trl versions, flash-attn / liger / triton present?
#   small  SmolLM2-135M shape (random weights, benchmarks/synthetic.py: no download), bf16-mixed, fixed and
#          variable lengths, DPO and SimPO: ours (dpo, simpo, dpo+cache) vs `trl` and `trl-best`
#          (benchmarks/throughput.py: ms/step with 95% intervals, peak memory, MFU; trl-best's rows say
#          which of TRL's settings it ran with and which this machine refused, and why)
#   big    Mistral-7B shape (7.24B parameters, random weights built on the GPU, bf16 weights, AdamW),
#          2 pairs x 2048 tokens (prompt 512 + response 1536), a few steps of DPO with our cached
#          reference (dpo+cache) vs trl-best DPO (precompute_ref_log_probs) and SimPO vs trl-best
#          (CPOTrainer loss_type=simpo); one configuration at a time (--sequential)
#   sweep  16 sort runs (model=tiny, trainer=gpu) with hydra/launcher=gpu_jobs gpu_jobs.jobs_per_gpu=1, 4, 8
#          on one GPU (each job pins itself: trainer.devices=[job mod gpus], prefopt/config/gpu_jobs.py);
#          study wall time and runs/min per K, and the devices the jobs ran on, in sweep.txt
#   optional (PARTS="... tests profile flex compile"): tests/test_cuda.py; benchmarks/step_profile.py; flex: the
#   prompt-once rows through sdpa's dense mask against FlexAttention's block mask at SmolLM2-135M shape
#   (benchmarks/flex_shared_prompt.py, fwd+bwd, bf16) and tests/test_flex_attention.py with its CUDA test
#   (its own device call: PARTS="env flex"; PARTS="env flex" with --dry-run rehearses it, forward only on the CPU);
#   compile: our compiled path against trl-best (torch_compile=True) at SmolLM2-135M shape, bf16-mixed, fixed
#   and variable lengths: dpo+compile, simpo+compile (model.compile=true) and dpo+graphs, simpo+graphs
#   (model.compile=reduce-overhead: CUDA graphs with token buckets and capturable AdamW), ms/step with
#   intervals and each compiled row's compile time (first step against the second, in compile.json)
#   (its own device call: PARTS="env compile"; with --dry-run: tiny model, +compile only, +graphs said CUDA only)
#
#   bash scripts/gpu_device_check.sh             # on the GPU machine (OUT set by the device tool)
#   bash scripts/gpu_device_check.sh --dry-run   # on a CPU: every phase at toy size (tiny/mistral-toy
#                                                # models, 1-2 steps, 4 sort runs with 1 and 2 jobs),
#                                                # the same code paths except CUDA-only ones (said so)
# Environment: OUT (default outputs/gpu_device_check), PY (default python3; .venv/bin/python in a dry
# run), PARTS (default "env small big sweep"), BUDGET (seconds for all phases, default 450 = 7.5 min),
# LIMIT_ENV / LIMIT_SMALL / LIMIT_BIG / LIMIT_SWEEP / LIMIT_FLEX / LIMIT_COMPILE (each phase's limit),
# WHEELS (a folder of wheels to install to /tmp/site first, default .whl). Writes <phase>.cmd (the command),
# <phase>.log, small.json, big.json, sweep.txt, compile.json and summary.txt to $OUT; exits 1 when any
# phase failed or was cut off.
# Tested by tests/test_trl_best.py (bash -n; the dry run, marked slow).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n 2,36p "$0"; exit 0 ;;
    *) echo "gpu_device_check: unknown argument '$arg' (only --dry-run)" >&2; exit 2 ;;
  esac
done
if [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
OUT=${OUT:-outputs/gpu_device_check}
WHEELS=${WHEELS:-.whl}
PARTS=${PARTS:-env small big sweep}  # flex, compile: parts of their own (PARTS="env flex", PARTS="env compile";
                                     # rehearse them with --dry-run the same way)
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

# ---- the timing budget: every phase has a limit; a phase never runs past what is left of BUDGET
BUDGET=${BUDGET:-450}          # 7.5 min of phases: the device tool's start and transfers take the rest of 8
LIMIT_ENV=${LIMIT_ENV:-20}
LIMIT_SMALL=${LIMIT_SMALL:-170}
LIMIT_BIG=${LIMIT_BIG:-170}
LIMIT_SWEEP=${LIMIT_SWEEP:-90}
LIMIT_FLEX=${LIMIT_FLEX:-150}
LIMIT_COMPILE=${LIMIT_COMPILE:-400}
MIN_PHASE=15                   # a phase with less than this left is skipped, said so
if [ "$DRY" = 1 ]; then        # a CPU rehearsal: same phases, toy sizes; generous limits on a shared CPU
  BUDGET=${DRY_BUDGET:-900}; LIMIT_ENV=60; LIMIT_SMALL=420; LIMIT_BIG=240; LIMIT_SWEEP=300; LIMIT_FLEX=100
  LIMIT_COMPILE=600
fi
failed=0
: > "$OUT/summary.txt"
note() { echo "$*" | tee -a "$OUT/summary.txt"; }
cuda_only() { note "   skipped on the CPU (CUDA only): $*"; }
phase() {  # phase NAME LIMIT COMMAND...: the command in $OUT/NAME.cmd, its output in $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt "$MIN_PHASE" ]; then
    note "== $name: skipped, ${left}s of the ${BUDGET}s budget left"; failed=1; return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  printf '%q ' "$@" > "$OUT/$name.cmd"; echo >> "$OUT/$name.cmd"
  note "== $name (limit ${limit}s; ${SECONDS}s of ${BUDGET}s used): $(cat "$OUT/$name.cmd")"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  note "   $name: exit $rc after $((SECONDS - start))s$([ "$rc" = 124 ] && echo ' (cut off at its limit)')"
  [ "$rc" = 0 ] || failed=1
  return "$rc"
}
want() { [[ " $PARTS " == *" $1 "* ]]; }

if [ "$DRY" = 1 ]; then
  note "gpu_device_check --dry-run: CPU rehearsal at toy size (PY=$PY, OUT=$OUT)"
  DEVICE=(--device cpu); SMALL_MODEL=tiny; SMALL_PREC=32-true; SMALL_BATCH=4; BIG_MODEL=mistral-toy; BIG_FIXED=24,40
  SMALL_STEPS=(--warmup 1 --rounds 3 --steps 1 --memory-steps 1); BIG_STEPS=(--warmup 1 --rounds 3 --steps 1)
  BIG_PREC=bf16-true; SWEEP_RUNS=4; SWEEP_JOBS="1 2"; SWEEP_STEPS=2; SWEEP_TRAINER="trainer=cpu threads=1"
  cuda_only "nvidia-smi; flash attention, Liger kernels and TRL's completion-only log-prob kernel in trl-best"
else
  DEVICE=(--device cuda); SMALL_MODEL=smollm2-shape; SMALL_PREC=bf16-mixed; SMALL_BATCH=16; BIG_MODEL=mistral7b-shape
  BIG_FIXED=512,1536; SMALL_STEPS=(--warmup 2 --rounds 4 --steps 5); BIG_STEPS=(--warmup 1 --rounds 3 --steps 1)
  BIG_PREC=bf16-true; SWEEP_RUNS=16; SWEEP_JOBS="1 4 8"; SWEEP_STEPS=${SWEEP_STEPS:-30}
  SWEEP_TRAINER="trainer=gpu"
  export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}  # one GPU: gpu_jobs.gpus=auto counts it, every sweep job on GPU 0
fi

env_report() {
  if [ "$DRY" = 0 ]; then nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total --format=csv; fi
  "$PY" - <<'EOF'
import importlib.util, torch, transformers, lightning, trl
print("torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
print("transformers", transformers.__version__, "lightning", lightning.__version__, "trl", trl.__version__)
for name in ("flash_attn", "flash_attn_interface", "liger_kernel", "triton", "kernels"):
    print(f"{name}: {'present' if importlib.util.find_spec(name) else 'absent'}")
EOF
}
export DRY PY OUT SWEEP_RUNS SWEEP_JOBS SWEEP_STEPS SWEEP_TRAINER
export -f env_report
want env && { phase env "$LIMIT_ENV" bash -c env_report; cat "$OUT/env.log"; }

if want small; then
  phase small "$LIMIT_SMALL" "$PY" benchmarks/throughput.py "${DEVICE[@]}" --precision "$SMALL_PREC" \
    --models "$SMALL_MODEL" --lengths fixed,variable --batch-size "$SMALL_BATCH" --losses dpo,simpo,dpo+cache \
    --impls trl,trl-best "${SMALL_STEPS[@]}" --memory-from-timed --json "$OUT/small.json"
  sed -n '/^model /,$p' "$OUT/small.log"
fi

if want big; then
  phase big "$LIMIT_BIG" "$PY" benchmarks/throughput.py "${DEVICE[@]}" --precision "$BIG_PREC" \
    --models "$BIG_MODEL" --lengths fixed --fixed "$BIG_FIXED" --batch-size 2 --losses dpo+cache,simpo \
    --impls trl-best --sequential --memory-from-timed "${BIG_STEPS[@]}" --memory-steps 1 --json "$OUT/big.json"
  sed -n '/^model /,$p' "$OUT/big.log"
fi

sweep() {  # 16 sort runs at each K jobs; the task's SFT policy and pairs are built once first (not timed)
  local data=(data=sort data.source.n_sft=3000 data.source.sft_steps=150 data.source.n_pair_prompts=300
              data.source.n_eval_prompts=48)
  local trainer; read -r -a trainer <<< "$SWEEP_TRAINER"
  local run=(model=tiny "${trainer[@]}" "${data[@]}" loss=dpo trainer.max_steps="$SWEEP_STEPS"
             checkpoint.enabled=false logger=none)
  "$PY" src/run.py "${run[@]}" seed=0 trainer.max_steps=2 hydra.run.dir="$OUT/sweep/warm" || return 1
  local base=""
  for k in $SWEEP_JOBS; do
    local start end wall
    start=$(date +%s.%N)
    "$PY" src/run.py -m "${run[@]}" "seed=range(0,$SWEEP_RUNS)" hydra/launcher=gpu_jobs \
      gpu_jobs.jobs_per_gpu="$k" hydra.sweep.dir="$OUT/sweep/jobs$k" > "$OUT/sweep/jobs$k.log" 2>&1 || {
        tail -20 "$OUT/sweep/jobs$k.log"; return 1; }
    end=$(date +%s.%N)
    wall=$("$PY" -c "print(f'{$end - $start:.2f}')")
    [ -z "$base" ] && base=$wall
    "$PY" -c "print(f'jobs $k: $SWEEP_RUNS runs in {$wall:.1f} s ({60 * $SWEEP_RUNS / $wall:.2f} runs/min), '
               f'{$base / $wall:.2f}x the study speed of jobs ${SWEEP_JOBS%% *}')" | tee -a "$OUT/sweep.txt"
    "$PY" - "$OUT/sweep/jobs$k" <<'EOF' | tee -a "$OUT/sweep.txt"   # where each job ran (its results.json)
import collections, json, pathlib, sys
runs = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).glob("*/results.json")]
where = collections.Counter(str(r["config"]["trainer"].get("devices")) for r in runs)
print(f"   {len(runs)} results.json, status {dict(collections.Counter(r['status'] for r in runs))}, devices {dict(where)}")
EOF
  done
}
if want sweep; then
  : > "$OUT/sweep.txt"; mkdir -p "$OUT/sweep"
  export -f sweep
  phase sweep "$LIMIT_SWEEP" bash -c sweep
  cat "$OUT/sweep.txt"
fi

# ---- optional parts (not in the default PARTS: they do not fit the 8 minutes with the above)
if want tests; then
  if [ "$DRY" = 1 ]; then cuda_only "tests/test_cuda.py"
  else phase tests 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py; tail -3 "$OUT/tests.log"; fi
fi
if want flex; then  # prompt-once rows: sdpa's dense mask against FlexAttention's block mask (benchmarks/flex_shared_prompt.py)
  if [ "$DRY" = 1 ]; then FLEX_SHAPE=(--pairs 2 --prompt 16 --response 16 --warmup 0 --rounds 2)
  else FLEX_SHAPE=(--hidden 576 --layers 30 --heads 9 --kv-heads 3 --vocab 49152 --pairs 8 --prompt 512 --response 256)
  fi
  phase flex "$LIMIT_FLEX" "$PY" benchmarks/flex_shared_prompt.py "${DEVICE[@]}" "${FLEX_SHAPE[@]}" --out "$OUT/flex.json"
  grep -v -i warn "$OUT/flex.log" | tail -7
  if [ "$DRY" = 1 ]; then cuda_only "FlexAttention's fused backward (tests/test_flex_attention.py -k cuda)"
  else phase flex_tests 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_flex_attention.py; tail -3 "$OUT/flex_tests.log"; fi
fi
if want compile; then  # our compiled path (model.compile=true / reduce-overhead) against trl-best's torch_compile
  if [ "$DRY" = 1 ]; then
    COMPILE_LOSSES=dpo+compile,simpo+compile; COMPILE_STEPS=(--warmup 1 --rounds 3 --steps 1)
    cuda_only "dpo+graphs, simpo+graphs (model.compile=reduce-overhead: CUDA graphs, token buckets, capturable AdamW)"
  else
    COMPILE_LOSSES=dpo+compile,dpo+graphs,simpo+compile,simpo+graphs; COMPILE_STEPS=(--warmup 3 --rounds 4 --steps 5)
  fi
  phase compile "$LIMIT_COMPILE" "$PY" benchmarks/throughput.py "${DEVICE[@]}" --precision "$SMALL_PREC" \
    --models "$SMALL_MODEL" --lengths fixed,variable --batch-size "$SMALL_BATCH" --losses "$COMPILE_LOSSES" \
    --impls trl-best "${COMPILE_STEPS[@]}" --memory-from-timed --json "$OUT/compile.json"
  sed -n '/^model /,$p' "$OUT/compile.log"
fi
if want profile; then
  phase profile 150 "$PY" benchmarks/step_profile.py "${DEVICE[@]}" --model "$SMALL_MODEL" --impl ours \
    --loss dpo+pack --lengths variable --batch-size 16 --rows 30
fi
note "done in ${SECONDS}s of ${BUDGET}s; $([ "$failed" = 0 ] && echo 'every phase passed' || echo 'some phase failed or was cut off')"
exit "$failed"
