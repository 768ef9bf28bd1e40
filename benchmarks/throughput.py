"""Training throughput and peak memory: prefopt's DPO, IPO, SimPO, RMiPO against TRL, side by side.

Every configuration trains the same synthetic model (same initial weights), on the same pairs in the
same order (prompts and responses of 64 tokens each), with the same batch size, optimizer settings
(AdamW, constant learning rate, gradient clipping 1.0, float32, no gradient checkpointing, metrics
logged every 10 steps), and the same number of steps:
  ours: prefopt.module.PreferenceModule + PreferenceDataModule under a Lightning Trainer, for dpo, ipo,
        simpo, rmipo (live marginal), and with cached frozen log-probs (prefopt.logp_cache):
        dpo+cache, rmipo_ref+cache (RMiPO with marginal=reference); every pass runs each prompt once for
        both responses (`share_prompt`), except in dpo-rows and simpo-rows (full prompt+response rows);
  trl:  TRL's DPOTrainer (loss_type sigmoid -> dpo, ipo -> ipo) and trl.experimental.cpo.CPOTrainer
        (loss_type simpo, cpo_alpha 0 -> simpo).
Each configuration is its own forked process (one torch thread; its own memory high-water mark). All
build first; then each runs a warm-up, and then the measured segments run one at a time, interleaved
A B C ... A B C ..., so that drift in machine load hits every configuration alike. Every step is
timed; the step time is the median over all measured steps (robust to bursts of load from elsewhere).
Peak memory: the process's resident-set high-water mark during training above its size before the
model was built (CPU), or max_memory_allocated (CUDA). Each worker fixes glibc's malloc thresholds
(see `tune_malloc`), the same for both implementations.

    python benchmarks/throughput.py                       # tiny and small, all losses, TRL if installed
    python benchmarks/throughput.py --models tiny --rounds 3 --json bench.json

`--json FILE` writes rows {impl, loss, model, pairs_per_s, tokens_per_s, peak_mem_mb, step_ms, ...}.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

torch.set_num_threads(1)

from memory import peak_rss_mb, rss_mb  # noqa: E402
from synthetic import MODELS, build_model, make_rows, n_params  # noqa: E402

PROMPT_TOKENS = RESPONSE_TOKENS = 64
BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "rmipo": 2.0}
GAMMA_BETA_RATIO = 0.5
LOG_EVERY = 10  # both frameworks' default: ours `log_every_n_steps`, TRL's `logging_steps`
OURS = ["dpo", "ipo", "simpo", "rmipo", "dpo+cache", "rmipo_ref+cache", "dpo-rows", "simpo-rows"]
TRL = ["dpo", "ipo", "simpo"]


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def reset_peak_rss() -> None:
    """Start the resident-set high-water mark afresh from the current size (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


# ---------------------------------------------------------------- the gate: one segment at a time


class Gate:
    """Blocks training at segment boundaries until the coordinator says go; times every step."""

    def __init__(self, conn, boundaries: set[int], device: str):
        self.conn, self.boundaries, self.device = conn, boundaries, device
        self.last = 0.0
        self.step_times: list[float] = []  # seconds of each step of the current segment
        self.losses: list[float] = []

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _wait(self) -> None:
        try:
            message = self.conn.recv()
        except (EOFError, OSError):  # the coordinator is gone
            os._exit(1)
        if message != "go":
            os._exit(1)
        self._sync()
        self.last = time.perf_counter()

    def start(self) -> None:
        reset_peak_rss()
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        self._wait()

    def step(self, done_steps: int) -> None:
        self._sync()
        now = time.perf_counter()
        self.step_times.append(now - self.last)
        self.last = now
        if done_steps in self.boundaries:
            self.conn.send(("segment", self.step_times))
            self.step_times = []
            self._wait()


# ---------------------------------------------------------------- our side


def run_ours(loss_name: str, model, tokenizer, rows, args, gate: Gate, cache_root: Path) -> dict[str, Any]:
    import lightning as L
    from omegaconf import OmegaConf

    from prefopt.data.datamodule import PreferenceDataModule
    from prefopt.logp_cache import attach_caches
    from prefopt.losses import DPOLoss, IPOLoss, RMiPOLoss, SimPOLoss
    from prefopt.module import PreferenceModule

    base = loss_name.split("+")[0].removesuffix("-rows")
    loss = {
        "dpo": lambda: DPOLoss(beta=BETA["dpo"]),
        "ipo": lambda: IPOLoss(beta=BETA["ipo"]),
        "simpo": lambda: SimPOLoss(beta=BETA["simpo"], gamma_beta_ratio=GAMMA_BETA_RATIO),
        "rmipo": lambda: RMiPOLoss(beta=BETA["rmipo"]),
        "rmipo_ref": lambda: RMiPOLoss(beta=BETA["rmipo"], marginal="reference"),
    }[base]()

    class InOrder(PreferenceDataModule):  # TRL runs with train_sampling_strategy="sequential" too
        def train_dataloader(self):
            return self.loader("train", shuffle=False)

    data = InOrder(rows, [], tokenizer, max_length=PROMPT_TOKENS + RESPONSE_TOKENS,
                   max_prompt_length=PROMPT_TOKENS, batch_size=args.batch_size, eval_batch_size=args.batch_size,
                   seed=0)
    data.setup()
    module = PreferenceModule(model, loss, lr=args.lr, weight_decay=0.0, adam_betas=(0.9, 0.95),
                              warmup_ratio=0.0, min_lr_ratio=1.0,  # constant learning rate
                              share_prompt=not loss_name.endswith("-rows"))
    info: dict[str, Any] = {}
    if loss_name.endswith("+cache"):
        accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
        cfg = OmegaConf.create({"logp_cache": True, "trainer": {"accelerator": accelerator, "precision": "32-true"}})
        t0 = time.perf_counter()
        cache = attach_caches(cfg, module, data, cache_root)["logp_cache"]
        info.update(cache_build_s=time.perf_counter() - t0, reference_released=cache["reference_released"])

    class GateCallback(L.Callback):
        def on_train_start(self, trainer, pl_module):
            gate.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            gate.losses.append(float(outputs["loss"]))
            gate.step(trainer.global_step)

    trainer = L.Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu", devices=1, precision="32-true",
        max_steps=args.total_steps, max_epochs=-1, gradient_clip_val=1.0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=LOG_EVERY, callbacks=[GateCallback()],
    )
    trainer.fit(module, datamodule=data)
    return info


# ---------------------------------------------------------------- TRL's side


def run_trl(loss_name: str, model, tokenizer, rows, args, gate: Gate, workdir: Path) -> dict[str, Any]:
    import copy

    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    common = dict(
        output_dir=str(workdir), per_device_train_batch_size=args.batch_size, max_steps=args.total_steps,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, logging_steps=LOG_EVERY, save_strategy="no",
        eval_strategy="no", report_to=[], use_cpu=not args.device.startswith("cuda"), bf16=False, fp16=False,
        gradient_checkpointing=False, dataloader_num_workers=0, seed=0, disable_tqdm=True,
        train_sampling_strategy="sequential", max_length=PROMPT_TOKENS + RESPONSE_TOKENS,
    )
    dataset = Dataset.from_list(rows)

    class GateCallback(TrainerCallback):
        def on_train_begin(self, args_, state, control, **kwargs):
            gate.start()

        def on_step_end(self, args_, state, control, **kwargs):
            gate.step(state.global_step)

    if loss_name in ("dpo", "ipo"):
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(loss_type=["sigmoid" if loss_name == "dpo" else "ipo"], beta=BETA[loss_name], **common)
        ref = copy.deepcopy(model).eval().requires_grad_(False)
        trainer = DPOTrainer(model=model, ref_model=ref, args=config, train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[GateCallback()])
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
        seq_len = batch["input_ids"].shape[1]
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        config = CPOConfig(loss_type="simpo", cpo_alpha=0.0, beta=BETA["simpo"],
                           simpo_gamma=BETA["simpo"] * GAMMA_BETA_RATIO, **common)
        trainer = CPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[GateCallback()])
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
        seq_len = batch["chosen_input_ids"].shape[1]
    trainer.remove_callback(PrinterCallback)  # logs go to log_history, not the console (ours print none)
    if seq_len != PROMPT_TOKENS + RESPONSE_TOKENS:
        raise RuntimeError(f"TRL tokenized the pairs to {seq_len} tokens, not {PROMPT_TOKENS + RESPONSE_TOKENS}")
    trainer.train()
    # TRL logs window means of the loss; its closing record has the mean over every step
    mean_loss = next((h["train_loss"] for h in reversed(trainer.state.log_history) if "train_loss" in h), None)
    first_loss = next((h["loss"] for h in trainer.state.log_history if "loss" in h), None)
    return {"mean_loss": mean_loss, "first_window_loss": first_loss}


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


def worker(conn, impl: str, loss_name: str, model_name: str, args, cache_root: str) -> None:
    die_with_parent()
    tune_malloc()
    torch.set_num_threads(1)
    reset_peak_rss()
    base_rss = rss_mb()
    try:
        model, tokenizer = build_model(model_name, seed=0)
        rows = make_rows(args.batch_size * args.total_steps, PROMPT_TOKENS, RESPONSE_TOKENS,
                         MODELS[model_name]["vocab"], seed=1)
        boundaries = {args.warmup + r * args.steps for r in range(args.rounds + 1)}
        gate = Gate(conn, boundaries, args.device)
        if args.device.startswith("cuda"):
            model = model.to(args.device)
        conn.send(("built", n_params(model)))
        with tempfile.TemporaryDirectory() as workdir:
            if impl == "ours":
                info = run_ours(loss_name, model, tokenizer, rows, args, gate, Path(cache_root))
            else:
                info = run_trl(loss_name, model, tokenizer, rows, args, gate, Path(workdir))
        if args.device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = peak_rss_mb() - base_rss
        conn.send(("done", dict(peak_mem_mb=peak, losses=gate.losses, **info)))
    except BaseException as err:  # report, so the coordinator does not wait forever
        import traceback

        conn.send(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()[-3000:]}"))
    finally:
        conn.close()


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


def bench_model(model_name: str, configs: list[tuple[str, str]], args, cache_root: str) -> list[dict[str, Any]]:
    ctx = mp.get_context("fork")
    procs: dict[tuple[str, str], tuple[Any, Any]] = {}
    n_params_ = 0
    try:
        for impl, loss in configs:  # build one at a time
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(child, impl, loss, model_name, args, cache_root), daemon=True)
            proc.start()
            child.close()
            procs[(impl, loss)] = (proc, parent)
            n_params_ = expect(parent, "built", f"{impl}/{loss}")
            print(f"  built {impl:4} {loss:16} ({model_name}, {n_params_ / 1e6:.1f}M parameters)", flush=True)
        steps: dict[tuple[str, str], list[float]] = {c: [] for c in configs}  # every measured step
        for c in configs:  # warm-up, one at a time
            go(procs[c][1], f"{c[0]}/{c[1]}")
            expect(procs[c][1], "segment", f"{c[0]}/{c[1]}")
        for r in range(args.rounds):  # interleaved, rotating the starting configuration each round
            order = configs[r % len(configs):] + configs[: r % len(configs)]
            for c in order:
                go(procs[c][1], f"{c[0]}/{c[1]}")
                steps[c].extend(expect(procs[c][1], "segment", f"{c[0]}/{c[1]}"))
            print(f"  round {r + 1}/{args.rounds} done", flush=True)
        rows = []
        for c in configs:
            proc, conn = procs[c]
            go(conn, f"{c[0]}/{c[1]}")
            done = expect(conn, "done", f"{c[0]}/{c[1]}")
            proc.join(timeout=60)
            step_s = statistics.median(steps[c])
            pairs_per_s = args.batch_size / step_s
            losses = done.pop("losses")  # ours: every step's loss; TRL: none (it reports mean_loss)
            mean_loss = done.pop("mean_loss", statistics.fmean(losses) if losses else None)
            rows.append(dict(
                impl=c[0], loss=c[1], model=model_name, pairs_per_s=pairs_per_s,
                tokens_per_s=pairs_per_s * 2 * (PROMPT_TOKENS + RESPONSE_TOKENS), peak_mem_mb=done.pop("peak_mem_mb"),
                step_ms=1e3 * step_s, step_ms_min=1e3 * min(steps[c]), step_ms_mean=1e3 * statistics.fmean(steps[c]),
                mean_loss=mean_loss,
                n_params=n_params_, batch_size=args.batch_size, device=args.device, **done,
            ))
    finally:
        for proc, _ in procs.values():
            if proc.is_alive():
                proc.kill()
    return rows


# ---------------------------------------------------------------- report


def find(rows, impl, loss, model):
    return next((r for r in rows if r["impl"] == impl and r["loss"] == loss and r["model"] == model), None)


def ratio_lines(rows: list[dict], models: list[str]) -> list[str]:
    lines = []
    for model in models:
        for loss in TRL:
            a, b = find(rows, "ours", loss, model), find(rows, "trl", loss, model)
            if a and b:
                trained = (f"{a['mean_loss'] / b['mean_loss']:.3f}" if a["mean_loss"] and b["mean_loss"] else "n/a")
                lines.append(f"{model:5} {loss:6} ours/TRL: pairs/s {a['pairs_per_s'] / b['pairs_per_s']:.2f}x, "
                             f"peak memory {a['peak_mem_mb'] / b['peak_mem_mb']:.2f}x, mean loss {trained}")
        for num, den in [("rmipo", "dpo"), ("rmipo", "simpo"), ("dpo+cache", "simpo"),
                         ("rmipo_ref+cache", "simpo"), ("dpo+cache", "dpo"), ("dpo", "dpo-rows"),
                         ("simpo", "simpo-rows")]:
            a, b = find(rows, "ours", num, model), find(rows, "ours", den, model)
            if a and b:
                lines.append(f"{model:5} ours {num}/{den}: step time {a['step_ms'] / b['step_ms']:.3f}, "
                             f"peak memory {a['peak_mem_mb'] / b['peak_mem_mb']:.3f}")
    return lines


def print_table(rows: list[dict]) -> None:
    print(f"\n{'model':6} {'impl':5} {'loss':16} {'pairs/s':>9} {'tokens/s':>10} {'step ms':>9} "
          f"{'peak MiB':>9} {'mean loss':>10}")
    for r in rows:
        loss = "" if r["mean_loss"] is None else f"{r['mean_loss']:.4f}"
        print(f"{r['model']:6} {r['impl']:5} {r['loss']:16} {r['pairs_per_s']:9.2f} {r['tokens_per_s']:10.0f} "
              f"{r['step_ms']:9.1f} {r['peak_mem_mb']:9.0f} {loss:>10}")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,small", help="comma list of: " + ", ".join(MODELS))
    ap.add_argument("--losses", default=",".join(OURS), help="ours: " + ", ".join(OURS))
    ap.add_argument("--no-trl", action="store_true", help="only our implementations")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    ap.add_argument("--steps", type=int, default=None, help="steps per measured segment (tiny 20, small 3)")
    ap.add_argument("--warmup", type=int, default=2, help="steps before measuring")
    ap.add_argument("--rounds", type=int, default=3, help="measured segments per configuration")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and torch.cuda.is_initialized():
        raise SystemExit("CUDA must not be initialised before the workers fork")
    losses = [name for name in args.losses.split(",") if name]
    unknown = sorted(set(losses) - set(OURS))
    if unknown:
        raise SystemExit(f"unknown --losses {unknown}; choose from {OURS}")
    with_trl = not args.no_trl and trl_available()
    if not args.no_trl and not with_trl:
        print("TRL is not installed (pip install -e '.[trl]'): measuring our implementations only")
    models = [m for m in args.models.split(",") if m]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as cache_root:
        for model in models:
            if model not in MODELS:
                raise SystemExit(f"unknown model {model!r}; choose from {list(MODELS)}")
            run_args = argparse.Namespace(**vars(args))
            run_args.steps = args.steps or (20 if model == "tiny" else 3)
            run_args.total_steps = args.warmup + args.rounds * run_args.steps
            configs = [("ours", name) for name in losses]
            if with_trl:
                configs += [("trl", name) for name in TRL if name in losses]
            print(f"{model}: {len(configs)} configurations, batch {args.batch_size} pairs, "
                  f"{args.warmup} warm-up + {args.rounds} x {run_args.steps} measured steps, device {args.device}",
                  flush=True)
            rows += bench_model(model, configs, run_args, cache_root)
    print_table(rows)
    print()
    for line in ratio_lines(rows, models):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
        print(f"\nrows written to {args.json}")
    return rows


if __name__ == "__main__":
    main()
