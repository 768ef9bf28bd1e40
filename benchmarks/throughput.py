"""Training step cost and peak memory: prefopt's losses against TRL 1.16, side by side, with intervals.

Every configuration trains the same synthetic model (same initial weights) on the same pairs, with the
same batch size, optimizer (AdamW, constant learning rate, clipping 1.0, float32, no activation
checkpointing, metrics every 10 steps) and number of steps. `--lengths fixed`: prompts and responses of
64 tokens, no padding, both sides in file order. `--lengths variable`: UltraFeedback-like long-tailed
lengths (benchmarks/synthetic.py: log-normal, capped at 128 prompt / 256 total tokens).
  ours          prefopt.train.module.PreferenceModule under Lightning: dpo, ipo, simpo, rmipo (live marginal),
                dpo+cache / rmipo_ref+cache (cached reference table, prefopt.scoring.logp_cache), dpo-rows /
                simpo-rows (full prompt+response rows instead of each prompt once); with variable
                lengths our default loader for such data: `group_by_length` (data/sampler.py), and
                dpo+pack / simpo+pack: the packed layout (`data.pack`; `--pack on` for every row):
                each pair's prompt, chosen and rejected end to end, several pairs to a row (rows
                at most 10% padding, prompts once; prefopt.scoring.tree), which takes precedence over
                sharing prompts (so dpo-rows runs as dpo+pack under `--pack on`). With `--device cuda`
                every row of ours packs by default, as `data.pack=auto` does there (`--pack off`: not).
                Our compiled path: dpo+compile / simpo+compile / dpo+cache+compile (`model.compile=true`:
                each decoder layer and the loss under torch.compile) and dpo+graphs / simpo+graphs /
                dpo+cache+graphs (`model.compile=reduce-overhead`: CUDA graphs, with the token buckets
                and capturable AdamW a run gets with it), built by the run's own functions
                (`compiled_parts`: compile_policy, compile_loss, token_buckets; the module's
                compile_setting). The first step compiles, in the warm-up (so --warmup >= 1); its time
                (CompileTimer's first and second step) and dynamo's graph count are in the row
                (compile_first_step_s, compile_second_step_s, compile_s, compiled_graphs), apart from the
                timed steps; graphs_after_warmup counts those compiled later (new shapes), inside them.
                +graphs without `--device cuda` is skipped: a row with `skipped` (its reason).
  trl           TRL as shipped: DPOTrainer (sigmoid -> dpo, ipo) and, for simpo, TRL's experimental
                trl.experimental.cpo.CPOTrainer (loss_type simpo, cpo_alpha 0), sequential order.
  trl-tuned     DPOTrainer with TRL's knobs that help: precompute_ref_log_probs=True (against our
                dpo+cache) and, with variable lengths, train_sampling_strategy="group_by_length".
  trl-tuned-gpu-path  DIAGNOSTIC: both of the above (precompute_ref_log_probs and the CUDA code path),
                against our dpo+cache: what a GPU user of TRL gets with its best knob.
  trl-best      TRL 1.16's best configuration, each setting that TRL and this machine accept
                (`trl_best_settings`, checked against DPOConfig's / CPOConfig's real fields): flash
                attention (flash-attn installed, CUDA, bf16), padding_free (DPOTrainer 1.16 disables it:
                padded chosen/rejected rows), precompute_ref_log_probs (DPO; against our dpo+cache when
                run), train_sampling_strategy="group_by_length", use_liger_kernel (layer kernels; CUDA and
                liger-kernel), torch_compile=True, and the completion-only log-prob kernel (automatic on
                CUDA with Triton). SimPO: CPOTrainer loss_type=simpo with the same settings it has. Rows
                carry `settings` (what ran) and `refused` (name -> why not); the console prints both.
                On the CPU the GPU-only ones are refused as such.
  trl-gpu-path  DIAGNOSTIC: DPOTrainer with its CUDA code path forced on the CPU. TRL's fused LM head
                (trl.trainer.utils.add_fused_lm_head) scores only completion positions when
                `_use_triton(device)` (CUDA/XPU with Triton) and every position elsewhere; the patch
                makes that test true, while the per-tile statistics keep their torch fallback (on a GPU
                they are Triton kernels). This is what a GPU user's TRL computes; CPOTrainer has no
                such branch (full logits on every device), so for simpo `trl` is also its GPU path.
Method: each configuration is its own forked process (one torch thread). All build first; after a
warm-up, measured segments run one at a time, interleaved A B C ... A B C ... (the first rotating), so
load from elsewhere hits all alike. Step cost is CPU time of the process (time.process_time), which a
busy machine inflates far less than wall time (also reported). cpu_ms_per_step is the mean over all
measured steps, with a 95% t-interval over the per-round segment means; every ratio ours/TRL comes
with a 95% t-interval over the per-round log ratios (same rounds, paired). Load averages are recorded.
On CUDA (`--device cuda`), where CPU time says little, pairs/s, mfu and the ratios use wall time.
Peak memory: separate processes run the same configuration for a few steps under torch's profiler
(allocation events; on CUDA max_memory_allocated): the most memory live tensors held above a baseline
taken after imports and the model build (reference copies, optimizer state, activations, gradients
and any reference table are all above it). mfu: the policy's model FLOPs per step (see `step_flops`:
the same for every implementation) / CPU step time / the one-thread float32 matmul peak measured in
this run. padded_share: share of the tokens the policy's transformer
pass processes that are padding (ours: the layout it ran, `layout` in the row: prompt-once packed,
packed, shared prompt or rows; `packed` says whether it packed; only the packed rows' tails are padding).

    python benchmarks/throughput.py                       # tiny and small, fixed and variable lengths
    python benchmarks/throughput.py --models tiny --lengths variable --losses dpo,simpo --rounds 8 --json b.json

`--fixed P,R` sets the fixed prompt and response tokens (512,1536: 2048-token rows); `--precision
bf16-true` keeps bfloat16 weights (a 7B model with AdamW on one GPU); `--sequential` runs one
configuration's process at a time, warm-up and rounds back to back (models of which one copy fills
the device; ratios then pair rounds by index, `order` in the row); `--memory-from-timed` (CUDA) reads
each timed process's own allocator peak instead of separate memory runs (on the CPU a stand-in: the
resident set's growth; `memory_source` in the row says which). Models: `mistral7b-shape`
(7.24B, built on the device) and `mistral-toy` (the same code at toy size) besides tiny/small/smollm2-shape.

`--json FILE` writes rows {impl, loss, model, lengths, pairs_per_s, tokens_per_s, peak_mem_mb,
cpu_ms_per_step, ci_low, ci_high, padded_share, mfu, ...}; TRL rows also carry `speedup` (their CPU
step time / ours, with speedup_ci_low/high) and `mem_ratio` (ours / theirs) against `vs_ours` (VS_OURS's
row when it ran, else the same loss, else our fastest fair row), `speedup_vs` against our other rows of
that loss, and `best_ours` with `speedup_best`: our fastest row of that loss that ran (a cached
reference only against TRL rows that precompute theirs), e.g. trl-best against dpo+graphs.
TRL is the optional extra `pip install -e ".[trl]"` (trl==1.16.0).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

torch.set_num_threads(1)

from bench_stats import mean_interval, ratio_interval  # noqa: E402
from synthetic import MODELS, build_model, make_rows, make_variable_rows, n_params  # noqa: E402

FIXED = 64  # prompt and response tokens with --lengths fixed
VARIABLE_MAX_PROMPT, VARIABLE_MAX_TOTAL = 128, 256
BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "rmipo": 2.0}
GAMMA_BETA_RATIO = 0.5
LOG_EVERY = 10  # both frameworks' default: ours `log_every_n_steps`, TRL's `logging_steps`
OURS = ["dpo", "ipo", "simpo", "rmipo", "dpo+cache", "ipo+cache", "rmipo_ref+cache", "dpo-rows", "simpo-rows",
        "dpo+pack", "simpo+pack", "dpo+cache+pack", "dpo+compile", "simpo+compile", "dpo+cache+compile",
        "dpo+graphs", "simpo+graphs", "dpo+cache+graphs"]
COMPILE = {"+compile": True, "+graphs": "reduce-overhead"}  # suffix -> our `model.compile` (train/compiling.py)
DEFAULT_OURS = ["dpo", "simpo", "dpo+cache"]
TRL_IMPLS = {"trl": ["dpo", "ipo", "simpo"], "trl-tuned": ["dpo", "ipo"], "trl-gpu-path": ["dpo", "ipo"],
             "trl-tuned-gpu-path": ["dpo", "ipo"], "trl-best": ["dpo", "ipo", "simpo"]}
VS_OURS = {(impl, loss): f"{loss}+cache" for impl in ("trl-tuned", "trl-tuned-gpu-path", "trl-best")
           for loss in ("dpo", "ipo")}  # else the same loss; when neither ran, our fastest fair row (`paired_ours`)
LABELS = {
    "trl-gpu-path": "diagnostic: TRL's CUDA code path (completion-only LM head) forced on the CPU",
    "trl-tuned-gpu-path": "diagnostic: trl-tuned with TRL's CUDA code path forced on the CPU",
    ("trl", "simpo"): "experimental: trl.experimental.cpo.CPOTrainer (no device branch: also its GPU path)",
    "trl-best": "TRL 1.16's best configuration that this machine accepts (see `settings` and `refused`)",
    ("trl-best", "simpo"): "CPOTrainer loss_type=simpo with TRL's best settings it accepts here "
                           "(see `settings` and `refused`)",
}


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- the gate: one segment at a time


class Gate:
    """Blocks training at segment boundaries until the coordinator says go; times every step in CPU
    time of this process and wall time. `conn=None`: no gating (the memory runs)."""

    def __init__(self, conn, boundaries: set[int], device: str):
        self.conn, self.boundaries, self.device = conn, boundaries, device
        self.last = (0.0, 0.0)
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self.losses: list[float] = []

    def _now(self) -> tuple[float, float]:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.process_time(), time.perf_counter()

    def _wait(self) -> None:
        if self.conn is not None:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the coordinator is gone
                os._exit(1)
            if message != "go":
                os._exit(1)
        self.last = self._now()

    def start(self) -> None:
        self._wait()

    def step(self, done_steps: int) -> None:
        now = self._now()
        self.cpu.append(now[0] - self.last[0])
        self.wall.append(now[1] - self.last[1])
        self.last = now
        if done_steps in self.boundaries and self.conn is not None:
            self.conn.send(("segment", (self.cpu, self.wall)))
            self.cpu, self.wall = [], []
            self._wait()


# ---------------------------------------------------------------- our side


def base_loss(name: str) -> str:
    """The loss of one of our configurations (dpo+cache+compile -> dpo, simpo-rows -> simpo)."""
    return name.split("+")[0].removesuffix("-rows")


def compile_setting(loss_name: str) -> bool | str:
    """Our `model.compile` for a configuration: `+compile` true (inductor: decoder layers and the loss),
    `+graphs` reduce-overhead (CUDA graphs; token buckets and capturable AdamW come with it), else false."""
    return next((value for suffix, value in COMPILE.items() if suffix in loss_name), False)


def skip_reason(loss_name: str, device: str) -> str | None:
    """Why one of our configurations cannot run on `device` (None: it can): `+graphs` needs CUDA. Decided
    from `--device` alone, so CUDA stays uninitialised in the coordinator."""
    if compile_setting(loss_name) == "reduce-overhead" and not device.startswith("cuda"):
        return f"model.compile=reduce-overhead (CUDA graphs) runs on CUDA only (GPU-only: skipped on {device})"
    return None


def compiled_parts(loss_name: str, model, max_length: int):
    """(policy, loss, token buckets, setting) under the configuration's `model.compile`, built by the code
    a run uses: compile_policy (run/steps.py policy_to_train), compile_loss (preference_module) and
    token_buckets with data.token_buckets=auto (config/run_plan.py: on under reduce-overhead)."""
    from prefopt.scoring.buckets import token_buckets
    from prefopt.train.compiling import compile_loss, compile_policy

    setting = compile_setting(loss_name)
    buckets = token_buckets("auto", setting, max_length)
    return compile_policy(model, setting), compile_loss(our_loss(loss_name), setting), buckets, setting


def graph_count() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_callbacks(setting, warmup: int) -> list:
    """A compiled row's callbacks, to go before the gate (which waits at the warm-up's end): the run's own
    CompileTimer, and the graph count when the warm-up ends (graphs compiled after it, for shapes the
    warm-up did not see, fell in the timed rounds). None for an eager row."""
    if not setting:
        return []
    import lightning as L

    from prefopt.train.compiling import CompileTimer

    class WarmGraphs(L.Callback):
        count: int | None = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == warmup:
                self.count = graph_count()

    return [CompileTimer(setting), WarmGraphs()]


def compile_report(callbacks: list) -> dict[str, Any]:
    """A compiled row's compile cost (`compile_callbacks`): wall seconds of the first step, compilation
    included, and of the second; dynamo's graphs in all and those compiled after the warm-up. The warm-up
    steps absorb the first compilation: it is not in the timed rounds' step times."""
    if not callbacks:
        return {}
    timer, warm = callbacks
    first, second = (list(timer.times) + [None, None])[:2]
    total = graph_count()
    return {"compile_setting": timer.setting, "compile_first_step_s": first, "compile_second_step_s": second,
            "compile_s": max(0.0, first - second) if second is not None else None, "compiled_graphs": total,
            "graphs_after_warmup": total - warm.count if warm.count is not None else None}


def our_loss(loss_name: str):
    from prefopt.losses import DPOLoss, IPOLoss, RMiPOLoss, SimPOLoss

    base = base_loss(loss_name)
    return {
        "dpo": lambda: DPOLoss(beta=BETA["dpo"]),
        "ipo": lambda: IPOLoss(beta=BETA["ipo"]),
        "simpo": lambda: SimPOLoss(beta=BETA["simpo"], gamma_beta_ratio=GAMMA_BETA_RATIO),
        "rmipo": lambda: RMiPOLoss(beta=BETA["rmipo"]),
        "rmipo_ref": lambda: RMiPOLoss(beta=BETA["rmipo"], marginal="reference"),
    }[base]()


LAYOUT_NAMES = {"tree": "prompt-once packed", "packed": "packed", "shared": "shared prompt", "rows": "rows"}


def padding(batches, layouts: list[str]) -> float:
    """Padded share of the tokens over `batches`, each run on its layout (prefopt.scoring.layout.batch_layout)."""
    from prefopt.scoring.layout import token_counts

    counts = [token_counts(b, shared=layout == "shared", packed=layout == "packed", tree=layout == "tree")
              for b, layout in zip(batches, layouts)]
    return 1.0 - sum(r for r, _ in counts) / max(1, sum(p for _, p in counts))


def packing(args, loss_name: str = "") -> bool:
    """Whether our rows use the packed layout: a `+pack` configuration (dpo+pack), `--pack on`, with
    `--pack auto` variable lengths (fixed lengths have no padding to remove), with `--pack default` (the
    default) as the project's `data.pack=auto` resolves on one device: on a GPU, not on the CPU;
    `--pack off`: only the +pack configurations."""
    if "+pack" in loss_name or args.pack == "on":
        return True
    if args.pack == "default":
        return args.device.startswith("cuda")
    return args.pack == "auto" and args.lengths == "variable"


def trainer_settings(args) -> dict[str, Any]:
    """Our Lightning Trainer's arguments: one device, `--precision`, the run's steps, clipping 1.0 (as our
    runs clip, trainer_factory.take_clipping: a callback, which fused AdamW under AMP allows), no logger."""
    return dict(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu", devices=1, precision=args.precision,
        max_steps=args.total_steps, max_epochs=-1, gradient_clip_val=1.0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=LOG_EVERY,
    )


def run_ours(loss_name: str, model, tokenizer, rows, args, gate: Gate, cache_root: Path) -> dict[str, Any]:
    import lightning as L
    from omegaconf import OmegaConf

    from prefopt.data.datamodule import PreferenceDataModule
    from prefopt.scoring.logp_cache import attach_caches
    from prefopt.scoring.layout import LayoutChoice, batch_layout
    from prefopt.train.module import PreferenceModule
    from prefopt.train.optim import default_factories
    from prefopt.train.trainer_factory import take_clipping

    class InOrder(PreferenceDataModule):  # fixed lengths: file order, as TRL's sequential sampler
        def train_dataloader(self):
            return self.loader("train", shuffle=False)

    variable = args.lengths == "variable"
    model, loss, buckets, setting = compiled_parts(loss_name, model, args.max_length)
    data = (PreferenceDataModule if variable else InOrder)(
        rows, [], tokenizer, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
        batch_size=args.batch_size, eval_batch_size=args.batch_size, seed=0, group_by_length=variable,
        layout=LayoutChoice(pack=packing(args, loss_name), share_prompt=not loss_name.endswith("-rows"),
                            buckets=buckets))
    data.setup()
    share_prompt = data.collator.layout.share_prompt
    optimizer, scheduler = default_factories(lr=args.lr, weight_decay=0.0, adam_betas=(0.9, 0.95), warmup_ratio=0.0,
                                             min_lr_ratio=1.0)  # constant learning rate
    module = PreferenceModule(model, loss, share_prompt=share_prompt, optimizer=optimizer, scheduler=scheduler,
                              compile_setting=setting)  # reduce-overhead on CUDA: capturable AdamW (adamw_options)
    batches = list(data.train_dataloader())
    layouts = [batch_layout(b, model, share_prompt) for b in batches]
    first = layouts[0] if layouts else "rows"
    info: dict[str, Any] = {
        "padded_share": padding(batches, layouts),
        "packed": first in ("tree", "packed"),
        "layout": LAYOUT_NAMES[first],
    }
    if "+cache" in loss_name:
        accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
        cfg = OmegaConf.create({"logp_cache": True,
                                "trainer": {"accelerator": accelerator, "precision": args.precision}})
        t0 = time.perf_counter()
        cache = attach_caches(cfg, module.frozen, data, cache_root)["logp_cache"]
        info.update(cache_build_s=time.perf_counter() - t0, reference_released=cache["reference_released"])

    class GateCallback(L.Callback):
        def on_train_start(self, trainer, pl_module):
            gate.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            gate.losses.append(float(outputs["loss"]))
            gate.step(trainer.global_step)

    settings = trainer_settings(args)
    compiling = compile_callbacks(setting, getattr(args, "warmup", 0))  # CompileTimer, as a run adds it
    callbacks = [*take_clipping(settings), *compiling, GateCallback()]  # takes the clipping out of `settings`
    trainer = L.Trainer(**settings, callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    return {**info, **compile_report(compiling)}


# ---------------------------------------------------------------- TRL's side


def force_trl_gpu_path() -> None:
    """DIAGNOSTIC: make TRL's fused LM head take its CUDA branch on the CPU (completion positions only).

    trl/trainer/utils.py `add_fused_lm_head` sets `compact = _use_triton(hidden_states.device)` and
    scores `hidden_states[mask]` when it is true; the kernels module keeps its own `_use_triton`, so
    the per-tile statistics still run as torch ops (Triton does not run on a CPU)."""
    import trl.trainer.utils as trl_utils

    trl_utils._use_triton = lambda device: True


TRL_BEST = ("padding_free", "attn_implementation", "precompute_ref_log_probs", "train_sampling_strategy",
            "use_liger_kernel", "torch_compile", "completion_only_logps")


def trl_best_settings(loss_name: str, device: str, precision: str = "32-true") -> dict[str, Any]:
    """TRL 1.16's best configuration for `loss_name` on `device`, as far as TRL and this machine accept it.

    DPO (and IPO): DPOTrainer; SimPO: trl.experimental.cpo.CPOTrainer (loss_type simpo). Each of TRL's
    speed settings (`TRL_BEST`) is checked against the config class's real fields (dataclasses.fields of
    DPOConfig / CPOConfig) and against what this machine has. Returns {"config": kwargs for the config,
    "attn": attention implementation to set on the model or None, "settings": what is on (name -> value),
    "refused": name -> why it is off}."""
    import dataclasses
    import inspect
    import shutil

    import trl
    from transformers.utils import is_flash_attn_2_available, is_liger_kernel_available

    cpo = loss_name == "simpo"
    if cpo:
        from trl.experimental.cpo import CPOConfig as Config, CPOTrainer as Trainer
    else:
        from trl import DPOConfig as Config, DPOTrainer as Trainer
    fields = {f.name for f in dataclasses.fields(Config)}
    cuda = device.startswith("cuda")
    half = precision.startswith("bf16")
    config: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    refused: dict[str, str] = {}
    where = f"{Config.__name__} (TRL {trl.__version__})"

    def has(name: str) -> bool:
        if name not in fields:
            refused[name] = f"not a field of {where}"
            return False
        return True

    # flash attention: a model setting (model_init_kwargs for a model id; here set on the built model)
    attn = None
    try:
        from transformers.utils import is_flash_attn_3_available
    except ImportError:  # older transformers
        def is_flash_attn_3_available() -> bool:
            return False
    if not cuda:
        refused["attn_implementation"] = "flash attention runs on CUDA only (GPU-only: skipped); sdpa kept"
    elif not half:
        refused["attn_implementation"] = "flash attention needs bf16/fp16 (use --precision bf16-*); sdpa kept"
    elif is_flash_attn_3_available():
        attn = "flash_attention_3"
    elif is_flash_attn_2_available():
        attn = "flash_attention_2"
    else:
        refused["attn_implementation"] = ("flash-attn is not installed (the Hub kernel kernels-community/flash-attn "
                                          "needs a download); sdpa kept")
    if attn:
        settings["attn_implementation"] = attn
    # padding-free rows: DPOTrainer 1.16 turns it off again in __init__ (warns, pads chosen/rejected rows)
    if has("padding_free"):
        if "self.padding_free = False" in inspect.getsource(Trainer.__init__):
            refused["padding_free"] = (f"{Trainer.__name__} in TRL {trl.__version__} disables it (warns and falls "
                                       "back to padded chosen/rejected rows)")
        elif not attn:
            refused["padding_free"] = "needs flash attention"
        else:
            config["padding_free"] = settings["padding_free"] = True
    if cpo:
        refused["precompute_ref_log_probs"] = f"not a field of {where}: SimPO has no reference model"
    elif has("precompute_ref_log_probs"):
        config["precompute_ref_log_probs"] = settings["precompute_ref_log_probs"] = True
    if has("train_sampling_strategy"):
        config["train_sampling_strategy"] = settings["train_sampling_strategy"] = "group_by_length"
    if has("use_liger_kernel"):
        if not cuda:
            refused["use_liger_kernel"] = "Liger's kernels are Triton kernels: CUDA only (GPU-only: skipped)"
        elif not is_liger_kernel_available():
            refused["use_liger_kernel"] = "liger-kernel is not installed"
        else:  # layer kernels only: its fused linear cross-entropy would replace TRL's fused LM head
            config["use_liger_kernel"] = settings["use_liger_kernel"] = True
            config["liger_kernel_config"] = {"fused_linear_cross_entropy": False}
    if has("torch_compile"):
        try:
            import torch._dynamo

            supported = torch._dynamo.is_dynamo_supported()
        except Exception:  # noqa: BLE001
            supported = False
        if not supported:
            refused["torch_compile"] = "torch.compile (dynamo) is not supported by this Python/torch"
        elif cuda:
            from torch.utils._triton import has_triton

            if has_triton():
                config["torch_compile"] = settings["torch_compile"] = True
            else:
                refused["torch_compile"] = "Triton is not installed: inductor cannot compile for CUDA"
        elif not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
            refused["torch_compile"] = "no C++ compiler: inductor cannot compile for the CPU"
        else:
            config["torch_compile"] = settings["torch_compile"] = True
    if cpo:
        refused["completion_only_logps"] = "CPOTrainer has no such branch: full logits on every device"
    else:
        from trl.kernels.chunked_logprob import _use_triton

        if _use_triton(torch.device(device)):
            settings["completion_only_logps"] = "automatic (trl.kernels.chunked_logprob, Triton)"
        else:
            refused["completion_only_logps"] = ("TRL takes it on CUDA/XPU with Triton only (GPU-only: skipped; "
                                                "the trl-gpu-path diagnostic forces it on the CPU)")
    return {"config": config, "attn": attn, "settings": settings, "refused": refused}


def describe_best(loss_name: str, best: dict[str, Any]) -> str:
    on = ", ".join(f"{k}={v}" for k, v in best["settings"].items()) or "none"
    off = "; ".join(f"{k}: {v}" for k, v in best["refused"].items()) or "none"
    return f"trl-best {loss_name}: on: {on}\n    refused: {off}"


def trl_padding(trainer, cpo: bool) -> float:
    """Padded share of TRL's batches over its training order (its own loader and collator)."""
    real = processed = 0
    for b in trainer.get_train_dataloader():
        if cpo:  # concatenated_forward pads chosen and rejected to the longer of the two
            width = max(b["chosen_input_ids"].shape[1], b["rejected_input_ids"].shape[1])
            processed += 2 * b["chosen_input_ids"].shape[0] * width
            real += int(b["chosen_attention_mask"].sum() + b["rejected_attention_mask"].sum())
        else:
            processed += b["input_ids"].numel()
            real += int(b["attention_mask"].sum())
    return 1.0 - real / max(1, processed)


def run_trl(impl: str, loss_name: str, model, tokenizer, rows, args, gate: Gate, workdir: Path) -> dict[str, Any]:
    import copy

    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    tuned = impl in ("trl-tuned", "trl-tuned-gpu-path")
    best = trl_best_settings(loss_name, args.device, args.precision) if impl == "trl-best" else None
    sampling = "group_by_length" if tuned and args.lengths == "variable" else "sequential"
    if best:
        sampling = best["config"].pop("train_sampling_strategy", sampling)
        if best["attn"]:
            try:
                model.set_attn_implementation(best["attn"])
            except (ImportError, ValueError, RuntimeError) as err:  # say so, and keep sdpa
                best["settings"].pop("attn_implementation", None)
                best["refused"]["attn_implementation"] = f"set_attn_implementation({best['attn']!r}) failed: {err}"
    common = dict(
        output_dir=str(workdir), per_device_train_batch_size=args.batch_size, max_steps=args.total_steps,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, logging_steps=LOG_EVERY, save_strategy="no",
        eval_strategy="no", report_to=[], use_cpu=not args.device.startswith("cuda"),
        bf16=args.precision.startswith("bf16"), fp16=False,
        gradient_checkpointing=False, dataloader_num_workers=0, seed=0, disable_tqdm=True,
        train_sampling_strategy=sampling, max_length=args.max_length,
        # TRL drops unknown columns before the sampler reads `length`; keeping them lets group_by_length work
        remove_unused_columns=sampling != "group_by_length",
    )
    dataset = Dataset.from_list(rows)

    class GateCallback(TrainerCallback):
        def on_train_begin(self, args_, state, control, **kwargs):
            gate.start()

        def on_step_end(self, args_, state, control, **kwargs):
            gate.step(state.global_step)

    cpo = loss_name == "simpo"
    if not cpo:
        from trl import DPOConfig, DPOTrainer

        if impl.endswith("gpu-path"):
            force_trl_gpu_path()
        extra = best["config"] if best else {"precompute_ref_log_probs": tuned}
        config = DPOConfig(loss_type=["sigmoid" if loss_name == "dpo" else "ipo"], beta=BETA[loss_name],
                           **extra, **common)
        ref = None if config.precompute_ref_log_probs else copy.deepcopy(model).eval().requires_grad_(False)
        trainer = DPOTrainer(model=model, ref_model=ref, args=config, train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[GateCallback()])
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        config = CPOConfig(loss_type="simpo", cpo_alpha=0.0, beta=BETA["simpo"],
                           simpo_gamma=BETA["simpo"] * GAMMA_BETA_RATIO, **(best["config"] if best else {}),
                           **common)
        trainer = CPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[GateCallback()])
    trainer.remove_callback(PrinterCallback)  # logs go to log_history, not the console (ours print none)
    if sampling == "group_by_length":  # a `length` column, as TRL's docs advise: prompt + longer response
        ds = trainer.train_dataset
        lengths = ([max(len(c), len(r)) for c, r in zip(ds["chosen_input_ids"], ds["rejected_input_ids"])] if cpo
                   else [len(p) + max(len(c), len(r))
                         for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])])
        trainer.train_dataset = ds.add_column("length", lengths)
    info = {"padded_share": trl_padding(trainer, cpo)}
    if best:
        info.update(settings=best["settings"], refused=best["refused"])
    if args.lengths == "fixed":
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
        seq_len = batch["chosen_input_ids" if cpo else "input_ids"].shape[1]
        if seq_len != sum(fixed_of(args)):
            raise RuntimeError(f"TRL tokenized the pairs to {seq_len} tokens, not {sum(fixed_of(args))}")
    trainer.train()
    if best and best["config"].get("torch_compile"):  # that it did compile: dynamo's graphs in this process
        from torch._dynamo.utils import counters

        info["compiled_graphs"] = int(counters["stats"]["unique_graphs"])
    # TRL logs window means of the loss; its closing record has the mean over every step
    info["mean_loss"] = next((h["train_loss"] for h in reversed(trainer.state.log_history) if "train_loss" in h),
                             None)
    return info


# ---------------------------------------------------------------- one configuration per process


def tune_malloc() -> None:
    """glibc: fixed mmap/trim thresholds (64/128 MiB). With the default dynamic thresholds a fresh
    process returns large activation buffers to the OS after every step and page-faults them back in
    (measured: the first of several fits in one process ran ~20% slower). Applied to every worker."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent exits (Lightning swallows SIGTERM)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def length_limits(lengths: str, fixed: tuple[int, int] = (FIXED, FIXED)) -> tuple[int, int]:
    """(max_length, max_prompt_length) of a `--lengths` mode, on both sides (`fixed`: prompt, response tokens)."""
    return (sum(fixed), fixed[0]) if lengths == "fixed" else (VARIABLE_MAX_TOTAL, VARIABLE_MAX_PROMPT)


def fixed_of(args) -> tuple[int, int]:
    """(prompt, response) tokens of `--lengths fixed` (`--fixed`; callers' namespaces without it: 64, 64)."""
    return tuple(getattr(args, "fixed", (FIXED, FIXED)))


def bench_rows(model_name: str, args) -> list[dict]:
    vocab = MODELS[model_name]["vocab"]
    n = args.batch_size * args.total_steps
    if args.lengths == "fixed":
        return make_rows(n, *fixed_of(args), vocab, seed=1)
    return make_variable_rows(n, vocab, VARIABLE_MAX_PROMPT, VARIABLE_MAX_TOTAL, seed=1)


def run_config(impl: str, loss: str, model, tokenizer, rows, args, gate: Gate, cache_root: str) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        if impl == "ours":
            return run_ours(loss, model, tokenizer, rows, args, gate, Path(cache_root))
        return run_trl(impl, loss, model, tokenizer, rows, args, gate, Path(workdir))


def worker(conn, impl: str, loss: str, model_name: str, args, cache_root: str) -> None:
    """Timed run: builds, reports, then trains segment by segment as the coordinator says."""
    die_with_parent()
    tune_malloc()
    torch.set_num_threads(1)
    try:
        model, tokenizer = build_model(model_name, seed=0, device=args.device, dtype=weights_dtype(args))
        rows = bench_rows(model_name, args)
        boundaries = {args.warmup + r * args.steps for r in range(args.rounds + 1)}
        gate = Gate(conn, boundaries, args.device)
        cuda = args.device.startswith("cuda")
        conn.send(("built", n_params(model)))
        if cuda:  # --memory-from-timed: this run's own peak above what it held after the build
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:  # on the CPU only a stand-in: the resident set's growth (high-water mark) over the build's
            from memory import peak_rss_mb, rss_mb

            before = rss_mb()
        info = run_config(impl, loss, model, tokenizer, rows, args, gate, cache_root)
        if cuda:
            torch.cuda.synchronize()
            info["timed_peak_mem_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        else:
            info["timed_peak_mem_mb"] = max(0.0, peak_rss_mb() - before)
        conn.send(("done", dict(losses=gate.losses, **info)))
    except BaseException as err:  # report, so the coordinator does not wait forever
        import traceback

        conn.send(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()[-3000:]}"))
    finally:
        conn.close()


def memory_worker(conn, impl: str, loss: str, model_name: str, args, cache_root: str) -> None:
    """Peak memory of live tensors above the baseline after imports and model build, over a short run."""
    from memory import peak_mb

    die_with_parent()
    torch.set_num_threads(1)
    try:
        import lightning  # noqa: F401  - imports before the baseline
        if impl != "ours":
            import trl  # noqa: F401
        model, tokenizer = build_model(model_name, seed=0, device=args.device, dtype=weights_dtype(args))
        rows = bench_rows(model_name, args)
        short = argparse.Namespace(**{**vars(args), "total_steps": args.memory_steps})
        gate = Gate(None, set(), args.device)
        peak = peak_mb(lambda: run_config(impl, loss, model, tokenizer, rows, short, gate, cache_root),
                                   args.device)
        conn.send(("done", peak))
    except BaseException as err:
        import traceback

        conn.send(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()[-3000:]}"))
    finally:
        conn.close()


def start_child(target, *args):
    """A forked process running `target(conn, *args)`, and this side of its pipe."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    child.close()
    return proc, parent


def last_report(proc, conn, kind: str, who: str):
    """The child's `kind` report (its error raised), then the child joined, or killed if it lingers."""
    try:
        return expect(conn, kind, who)
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()


def all_at_once(args) -> bool:
    """Whether a block's processes build (and memory runs run) together: on a GPU host, which has the
    cores; on a CPU one at a time; with --sequential never."""
    return args.device.startswith("cuda") and not getattr(args, "sequential", False)


def weights_dtype(args) -> torch.dtype:
    """The weights' dtype: bfloat16 with --precision bf16-true (a 7B model with AdamW on one GPU), else float32."""
    return torch.bfloat16 if args.precision == "bf16-true" else torch.float32


def go(conn, who: str) -> None:
    """Tell a worker to run its next segment (surfacing the error it sent if it already died)."""
    try:
        conn.send("go")
    except (BrokenPipeError, ConnectionResetError):
        msg = conn.recv() if conn.poll(1) else ("error", "the worker exited without a report")
        raise RuntimeError(f"{who} failed: {msg[1]}") from None


def expect(conn, kind: str, who: str):
    msg = conn.recv()
    if msg[0] == "error":
        raise RuntimeError(f"{who} failed: {msg[1]}")
    if msg[0] != kind:
        raise RuntimeError(f"{who}: expected {kind}, got {msg[0]}")
    return msg[1]


def timed_segments(model_name: str, configs: list[tuple[str, str]], args, cache_root: str):
    """Per configuration: per-round lists of step CPU and wall times, the final report, n_params."""
    procs: dict[tuple[str, str], tuple[Any, Any]] = {}
    rounds: dict[tuple[str, str], list[tuple[list[float], list[float]]]] = {c: [] for c in configs}
    done: dict[tuple[str, str], dict] = {}
    n_params_ = 0
    together = all_at_once(args)
    sequential = getattr(args, "sequential", False)

    def built(c) -> int:
        n = expect(procs[c][1], "built", f"{c[0]}/{c[1]}")
        print(f"  built {c[0]:12} {c[1]:16} ({model_name}, {n / 1e6:.1f}M parameters)", flush=True)
        return n

    try:
        for c in configs if sequential else ():  # one process at a time, start to end (a 7B model each)
            procs[c] = start_child(worker, *c, model_name, args, cache_root)
            n_params_ = built(c)
            for r in range(args.rounds + 1):  # warm-up, then the rounds back to back
                go(procs[c][1], f"{c[0]}/{c[1]}")
                segment = expect(procs[c][1], "segment", f"{c[0]}/{c[1]}")
                if r:
                    rounds[c].append(segment)
            go(procs[c][1], f"{c[0]}/{c[1]}")
            done[c] = expect(procs[c][1], "done", f"{c[0]}/{c[1]}")
            procs[c][0].join(timeout=120)
            print(f"  {c[0]} {c[1]}: {args.rounds} rounds done (sequential)", flush=True)
        for c in () if sequential else configs:  # build one at a time on a CPU
            procs[c] = start_child(worker, *c, model_name, args, cache_root)
            if not together:
                n_params_ = built(c)
        for c in configs if together else ():
            n_params_ = built(c)
        for c in () if sequential else configs:  # warm-up, one at a time
            go(procs[c][1], f"{c[0]}/{c[1]}")
            expect(procs[c][1], "segment", f"{c[0]}/{c[1]}")
        for r in range(0 if sequential else args.rounds):  # interleaved, rotating the starting configuration each round
            order = configs[r % len(configs):] + configs[: r % len(configs)]
            for c in order:
                go(procs[c][1], f"{c[0]}/{c[1]}")
                rounds[c].append(expect(procs[c][1], "segment", f"{c[0]}/{c[1]}"))
            print(f"  round {r + 1}/{args.rounds} done (load {os.getloadavg()[0]:.1f})", flush=True)
        for c in () if sequential else configs:
            proc, conn = procs[c]
            go(conn, f"{c[0]}/{c[1]}")
            done[c] = expect(conn, "done", f"{c[0]}/{c[1]}")
            proc.join(timeout=60)
    finally:
        for proc, _ in procs.values():
            if proc.is_alive():
                proc.kill()
    return rounds, done, n_params_


def peak_memory(model_name: str, configs: list[tuple[str, str]], args, cache_root: str) -> dict:
    """Each configuration's peak memory (`memory_worker`), one process at a time on a CPU; on a GPU all
    at once (each process reads its own allocator's peak)."""
    out: dict[tuple[str, str], float] = {}
    running: dict[tuple[str, str], tuple[Any, Any]] = {}

    def collect(c) -> None:
        out[c] = last_report(*running.pop(c), "done", f"memory {c[0]}/{c[1]}")

    for c in configs:
        running[c] = start_child(memory_worker, *c, model_name, args, cache_root)
        if not all_at_once(args):
            collect(c)
    for c in list(running):
        collect(c)
    return out


# ---------------------------------------------------------------- FLOPs and the matmul peak


def matmul_peak_flops(device: str = "cpu", seconds: float = 1.0, dtype: torch.dtype = torch.float32) -> float:
    """`dtype` matmul FLOP/s: on the CPU one thread in CPU time, the best of square sizes 256..1024;
    on CUDA in wall time, sizes up to 8192."""
    cuda = device.startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time
    best = 0.0
    for size in (256, 512, 1024) + ((4096, 8192) if cuda else ()):
        a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
        a @ b
        reps, start = 0, clock()
        while (spent := clock() - start) < seconds / 3 or reps < 3:
            a @ b
            reps += 1
            if cuda:
                torch.cuda.synchronize()
        best = max(best, 2 * size ** 3 * reps / spent)
    return best


def peak_flops_in_child(device: str, dtype: torch.dtype) -> float:
    """`matmul_peak_flops(device)` measured in a forked process, so that CUDA stays uninitialised in
    this one (the next block's workers fork from it)."""
    def measure(conn) -> None:
        try:
            conn.send(("done", matmul_peak_flops(device, dtype=dtype)))
        except BaseException as err:
            conn.send(("error", f"{type(err).__name__}: {err}"))

    return last_report(*start_child(measure), "done", f"matmul peak on {device}")


def step_flops(model, rows_lengths: list[tuple[int, int, int]], batch_size: int) -> float:
    """Model FLOPs of one policy training step (forward + backward = 3 x forward) on the mean pair, for
    the rows prompt+chosen and prompt+rejected: 2 x the transformer's matmul weights per token, causal
    attention (2 x layers x width x length^2 per row), and 2 x the LM head's weights per response token
    (the only positions any of these losses scores). Sharing a prompt between the two rows is not
    counted as less work, so it shows as a higher mfu."""
    head = model.get_output_embeddings()
    body = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    cfg = model.config
    per_pair = 0.0
    for p, c, r in rows_lengths:
        for length, response in ((p + c, c), (p + r, r)):
            per_pair += (2 * body * length + 2 * cfg.num_hidden_layers * cfg.hidden_size * length ** 2
                         + 2 * head.weight.numel() * response)
    return 3 * per_pair / len(rows_lengths) * batch_size


def token_lengths(rows: list[dict]) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) tokens of synthetic rows: words + BOS / + EOS."""
    return [(len(r["prompt"].split()) + 1, len(r["chosen"].split()) + 1, len(r["rejected"].split()) + 1)
            for r in rows]


# ---------------------------------------------------------------- rows and ratios


def configurations(losses: list[str], with_trl: bool, impls: list[str]) -> list[tuple[str, str]]:
    configs = [("ours", name) for name in losses]
    if with_trl:
        bases = {base_loss(name) for name in losses}
        for impl in impls:
            configs += [(impl, name) for name in TRL_IMPLS[impl] if name in bases]
    return configs


def label(impl: str, loss: str) -> str:
    return LABELS.get((impl, loss)) or LABELS.get(impl, "")


def result_rows(model_name, lengths, configs, rounds, done, mem, n_params_, flops, peak_flops, load, args):
    out = []
    tokens_per_pair = statistics.fmean(2 * p + c + r for p, c, r in lengths)
    timed = 1 if args.device.startswith("cuda") else 0  # step cost: wall time on a GPU, else CPU time
    for c in configs:
        cpu = [statistics.fmean(seg[0]) for seg in rounds[c]]
        wall = [statistics.fmean(seg[1]) for seg in rounds[c]]
        mean_cpu, low, high = mean_interval(cpu)
        mean_wall, wall_low, wall_high = mean_interval(wall)
        step = (mean_cpu, mean_wall)[timed]
        report = dict(done[c])
        losses = report.pop("losses")
        mean_loss = report.pop("mean_loss", statistics.fmean(losses) if losses else None)
        out.append(dict(
            impl=c[0], loss=c[1], model=model_name, lengths=args.lengths,
            pairs_per_s=args.batch_size / step, tokens_per_s=args.batch_size * tokens_per_pair / step,
            peak_mem_mb=mem[c], cpu_ms_per_step=1e3 * mean_cpu, ci_low=1e3 * low, ci_high=1e3 * high,
            wall_ms_per_step=1e3 * mean_wall, wall_ci_low=1e3 * wall_low, wall_ci_high=1e3 * wall_high,
            padded_share=report.pop("padded_share"), mfu=flops / step / peak_flops,
            model_flops_per_step=flops, matmul_peak_gflops=peak_flops / 1e9, mean_loss=mean_loss,
            label=label(*c), n_params=n_params_, batch_size=args.batch_size, device=args.device,
            precision=args.precision, order="sequential" if getattr(args, "sequential", False) else "interleaved",
            rounds=args.rounds, steps_per_round=args.steps, loadavg_start=load[0], loadavg_end=load[1],
            **report,
        ))
    for row in out:  # TRL rows: speed and memory of ours against them, paired by round
        if row["impl"] != "ours":
            compare(row, rounds, mem, timed)
    return out


def step_times(rounds, config: tuple[str, str], timed: int) -> list[float]:
    """Per-round mean step times of `config` (timed 0: CPU time, 1: wall time)."""
    return [statistics.fmean(seg[timed]) for seg in rounds[config]]


def fair_ours(key: tuple[str, str], rounds) -> list[str]:
    """Our configurations in `rounds` that TRL's row `key` can be held against: the same loss, and a cached
    reference only against TRL rows that precompute theirs (those VS_OURS pairs with a +cache row)."""
    precomputes = "+cache" in VS_OURS.get(key, "")
    return [name for impl, name in rounds
            if impl == "ours" and base_loss(name) == key[1] and (precomputes or "+cache" not in name)]


def fastest(names: list[str], rounds, timed: int) -> str | None:
    """The one of our `names` with the lowest mean step time (None: none ran)."""
    return min(names, key=lambda n: statistics.fmean(step_times(rounds, ("ours", n), timed)), default=None)


def paired_ours(key: tuple[str, str], rounds, timed: int) -> str | None:
    """The row of ours a TRL row's `speedup` is against: VS_OURS's when it ran, else the same loss, else
    the fastest fair one (dpo+compile, dpo+graphs, ...); `vs_ours` in the row says which."""
    fair = fair_ours(key, rounds)
    return next((name for name in (VS_OURS.get(key), key[1]) if name in fair), None) or fastest(fair, rounds, timed)


def compare(row: dict, rounds, mem: dict, timed: int) -> None:
    """TRL's `row` gets ours against it, paired by round: `speedup` (its step time / ours, 95% CI) and
    `mem_ratio` against `vs_ours`, `speedup_vs` against each other fair row of ours, and `best_ours` (our
    fastest fair row that ran) with `speedup_best`."""
    key = (row["impl"], row["loss"])
    vs = paired_ours(key, rounds, timed)
    if vs is None:
        return
    fair = fair_ours(key, rounds)
    theirs = step_times(rounds, key, timed)

    def against(name: str) -> list[float]:
        return list(ratio_interval(theirs, step_times(rounds, ("ours", name), timed)))

    ratio, low, high = against(vs)
    best = fastest(fair, rounds, timed)
    row.update(vs_ours=vs, speedup=ratio, speedup_ci_low=low, speedup_ci_high=high,
               mem_ratio=mem[("ours", vs)] / mem[key], best_ours=best, speedup_best=against(best),
               speedup_vs={name: against(name) for name in fair if name != vs})


def skipped_rows(model_name: str, configs: list[tuple[str, str]], args) -> list[dict]:
    """Rows of the configurations this device cannot run (`skip_reason`), each with its reason, printed."""
    out = []
    for impl, loss in configs:
        reason = skip_reason(loss, args.device) if impl == "ours" else None
        if reason:
            print(f"  skipped {impl} {loss}: {reason}", flush=True)
            out.append(dict(impl=impl, loss=loss, model=model_name, lengths=args.lengths, device=args.device,
                            skipped=reason))
    return out


def bench(model_name: str, losses: list[str], with_trl: bool, args, cache_root: str) -> list[dict]:
    configs = configurations(losses, with_trl, args.impls)
    skipped = skipped_rows(model_name, configs, args)
    configs = [c for c in configs if (c[0], c[1]) not in {(r["impl"], r["loss"]) for r in skipped}]
    if not configs:
        return skipped
    print(f"{model_name}, {args.lengths} lengths: {len(configs)} configurations, batch {args.batch_size} pairs, "
          f"{args.warmup} warm-up + {args.rounds} x {args.steps} measured steps, device {args.device}", flush=True)
    load_start = os.getloadavg()
    cuda = args.device.startswith("cuda")  # CUDA must stay uninitialised here until the workers have forked
    dtype = torch.bfloat16 if args.precision.startswith("bf16") else torch.float32  # what the matmuls run in
    peak = 0.0 if cuda else matmul_peak_flops(dtype=dtype)
    rounds, done, n_params_ = timed_segments(model_name, configs, args, cache_root)
    for c in configs:  # what trl-best ran with (read in its worker: CUDA stays uninitialised here)
        if "settings" in done[c]:
            print("  " + describe_best(c[1], done[c]), flush=True)
    load_end = os.getloadavg()
    if getattr(args, "memory_from_timed", False):  # the timed processes' own peaks: no extra runs
        mem = {c: done[c].pop("timed_peak_mem_mb") for c in configs}
        source = "timed run: CUDA allocator peak" if cuda else "timed run: resident-set high-water mark (CPU stand-in)"
    else:
        mem = peak_memory(model_name, configs, args, cache_root)
        source = "separate runs: CUDA allocator peak" if cuda else "separate runs: allocator events"
    for c in configs:
        done[c].pop("timed_peak_mem_mb", None)
        done[c]["memory_source"] = source
    peak = max(peak, peak_flops_in_child(args.device, dtype) if cuda else matmul_peak_flops(dtype=dtype))
    model, _ = build_model(model_name, seed=0, device="meta")  # shapes only
    lengths = token_lengths(bench_rows(model_name, args))
    flops = step_flops(model, lengths, args.batch_size)
    return result_rows(model_name, lengths, configs, rounds, done, mem, n_params_, flops, peak,
                     (load_start, load_end), args) + skipped


# ---------------------------------------------------------------- report


def print_table(rows: list[dict]) -> None:
    """The measured rows, one a line, then `print_notes`."""
    measured = [r for r in rows if "skipped" not in r]
    print(f"\n{'model':5} {'len':4} {'impl':18} {'loss':14} {'cpu ms/step (95% CI)':>24} {'pairs/s':>8} "
          f"{'pad':>5} {'mfu':>6} {'MiB':>7} {'ours faster (95% CI)':>22} {'mem ours/x':>10}")
    for r in measured:
        ci = f"{r['cpu_ms_per_step']:.1f} ({r['ci_low']:.1f}-{r['ci_high']:.1f})"
        speed = (f"{r['speedup']:.2f}x ({r['speedup_ci_low']:.2f}-{r['speedup_ci_high']:.2f})"
                 if "speedup" in r else "")
        mem = f"{r['mem_ratio']:.2f}" if "mem_ratio" in r else ""
        print(f"{r['model']:5} {r['lengths'][:4]:4} {r['impl']:18} {r['loss']:14} {ci:>24} {r['pairs_per_s']:8.2f} "
              f"{r['padded_share']:5.1%} {r['mfu']:6.1%} {r['peak_mem_mb']:7.1f} {speed:>22} {mem:>10}")
    print_notes(rows)


def print_notes(rows: list[dict]) -> None:
    """Below the table: ours against each TRL row's other fair rows and our fastest, the compiled rows'
    compile time (outside the timed rounds), the skipped configurations and trl-best's settings."""
    for r in rows:
        for name, (ratio, low, high) in r.get("speedup_vs", {}).items():
            print(f"  {r['model']} {r['lengths']}: ours {name} faster than {r['impl']} {r['loss']}: "
                  f"{ratio:.2f}x ({low:.2f}-{high:.2f})")
        if r.get("best_ours"):
            ratio, low, high = r["speedup_best"]
            print(f"  {r['model']} {r['lengths']}: {r['impl']} {r['loss']} against our fastest row that ran, "
                  f"{r['best_ours']}: ours {ratio:.2f}x faster ({low:.2f}-{high:.2f})")
    for r in rows:
        if r.get("compile_setting") is not None and r["impl"] == "ours":
            second = r["compile_second_step_s"]
            second = f"{second:.3f} s" if second is not None else "n/a"
            print(f"  {r['model']} {r['lengths']}: ours {r['loss']} (model.compile={str(r['compile_setting']).lower()}):"
                  f" first step {r['compile_first_step_s']:.1f} s, second {second}, in the warm-up; "
                  f"{r['compiled_graphs']} graphs, {r['graphs_after_warmup']} of them compiled in the timed rounds")
        if "skipped" in r:
            print(f"  {r['model']} {r['lengths']}: {r['impl']} {r['loss']} skipped: {r['skipped']}")
    for r in rows:
        if r["impl"] == "trl-best" and "skipped" not in r:
            print(f"  {r['model']} {r['lengths']} " + describe_best(r["loss"], r))
    print("speedup: TRL's CPU time per step / ours (vs_ours row), 95% t-interval over paired rounds; "
          "trl-gpu-path is a diagnostic of what TRL runs on a GPU")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,small", help="comma list of: " + ", ".join(MODELS))
    ap.add_argument("--lengths", default="fixed,variable", help="comma list of: fixed, variable")
    ap.add_argument("--losses", default=",".join(DEFAULT_OURS), help="ours: " + ", ".join(OURS))
    ap.add_argument("--impls", default=",".join(TRL_IMPLS), help="TRL rows: " + ", ".join(TRL_IMPLS))
    ap.add_argument("--no-trl", action="store_true", help="only our implementations")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    ap.add_argument("--steps", type=int, default=None, help="steps per measured segment (tiny 16, others 3)")
    ap.add_argument("--warmup", type=int, default=2, help="steps before measuring")
    ap.add_argument("--rounds", type=int, default=8, help="measured segments per configuration (>= 3)")
    ap.add_argument("--memory-steps", type=int, default=3, help="steps of each memory run")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--pack", choices=("default", "auto", "on", "off"), default="default",
                    help="all our rows in the packed layout (data.pack); default: as data.pack=auto, on with "
                         "--device cuda, off on the CPU; auto: with variable lengths only; off: only the +pack "
                         "configurations (dpo+pack, simpo+pack)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--precision", choices=("32-true", "bf16-mixed", "bf16-true"), default="32-true",
                    help="both sides: float32 (default), or bf16 autocast as GPU users train (TRL: bf16=True); "
                         "bf16-true: bfloat16 weights too (a 7B model with AdamW on one GPU)")
    ap.add_argument("--fixed", default=f"{FIXED},{FIXED}",
                    help="prompt,response tokens with --lengths fixed (e.g. 512,1536: rows of 2048 tokens)")
    ap.add_argument("--sequential", action="store_true",
                    help="one configuration's process at a time, warm-up and rounds back to back (not "
                         "interleaved): for models of which one copy fills the device (7B)")
    ap.add_argument("--memory-from-timed", action="store_true",
                    help="peak memory from the timed processes themselves, no separate memory runs: on CUDA "
                         "their allocator's peak; on the CPU only a stand-in (resident-set growth)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and torch.cuda.is_initialized():
        raise SystemExit("CUDA must not be initialised before the workers fork")
    if args.rounds < 3:
        raise SystemExit("--rounds must be at least 3 for an interval")
    losses = [name for name in args.losses.split(",") if name]
    unknown = sorted(set(losses) - set(OURS))
    if unknown:
        raise SystemExit(f"unknown --losses {unknown}; choose from {OURS}")
    if args.warmup < 1 and any(compile_setting(name) for name in losses):
        raise SystemExit("compiled configurations need --warmup >= 1: the first step compiles, outside the timed "
                         "rounds")
    args.fixed = tuple(int(x) for x in args.fixed.split(","))
    args.impls = [i for i in args.impls.split(",") if i]
    if set(args.impls) - set(TRL_IMPLS):
        raise SystemExit(f"unknown --impls {sorted(set(args.impls) - set(TRL_IMPLS))}; choose from {list(TRL_IMPLS)}")
    with_trl = not args.no_trl and trl_available()
    if not args.no_trl and not with_trl:
        print("TRL is not installed (pip install -e '.[trl]'): measuring our implementations only")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as cache_root:
        for model in [m for m in args.models.split(",") if m]:
            if model not in MODELS:
                raise SystemExit(f"unknown model {model!r}; choose from {list(MODELS)}")
            for lengths in [x for x in args.lengths.split(",") if x]:
                if lengths not in ("fixed", "variable"):
                    raise SystemExit(f"unknown --lengths {lengths!r}; choose from fixed, variable")
                run_args = argparse.Namespace(**vars(args))
                run_args.lengths = lengths
                run_args.steps = args.steps or (16 if model == "tiny" else 3)
                run_args.total_steps = args.warmup + args.rounds * run_args.steps
                run_args.max_length, run_args.max_prompt_length = length_limits(lengths, args.fixed)
                rows += bench(model, losses, with_trl, run_args, cache_root)
                if args.json:  # after every block: a long run that dies keeps what it measured
                    args.json.write_text(json.dumps(rows, indent=1))
    print_table(rows)
    if args.json:
        print(f"\nrows written to {args.json}")
    return rows


if __name__ == "__main__":
    main()
