"""Where one training step's time goes, ours or TRL's, on a benchmark model: torch's profiler over a
few steps after warm-up, and every call that made the host wait for the GPU, located in the code
(torch.cuda.set_sync_debug_mode), counted per step.

    python benchmarks/step_profile.py --device cuda --model smollm2-shape --impl ours --loss dpo
    python benchmarks/step_profile.py --device cuda --impl trl --loss dpo --lengths variable
    python benchmarks/step_profile.py --device cuda --loss dpo+pack --lengths variable --no-cudnn-attention

Same model, rows, optimizer and precision as benchmarks/throughput.py (its run_ours / run_trl). On a GPU
a step of a small model is bounded by the host issuing kernels; a synchronizing call stalls that
stream of work until the GPU has caught up, so the list of them is the first thing to read.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402
from synthetic import MODELS, build_model  # noqa: E402

OWN = ("prefopt", "lightning", "trl", "transformers", "accelerate")


class ProfileGate:
    """Stands in for throughput.Gate: profiles steps warmup+1 .. warmup+steps."""

    def __init__(self, warmup: int, steps: int, device: str, row_limit: int) -> None:
        self.warmup, self.steps, self.device, self.row_limit = warmup, steps, device, row_limit
        self.losses: list[float] = []
        self.syncs: collections.Counter[str] = collections.Counter()
        self.profiler = None
        self.since = 0.0

    def start(self) -> None:
        pass

    def _record_sync(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" not in str(message):
            return
        frames = [f for f in traceback.extract_stack()[:-1] if any(f"/{name}/" in f.filename for name in OWN)]
        where = " <- ".join(f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno} {f.name}"
                            for f in reversed(frames[-4:]))
        self.syncs[where or f"{filename}:{lineno}"] += 1

    def step(self, done: int) -> None:
        cuda = self.device.startswith("cuda")
        if done == self.warmup:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("warn")
            warnings.simplefilter("always")
            warnings.showwarning = self._record_sync
            activities = [torch.profiler.ProfilerActivity.CPU] + (
                [torch.profiler.ProfilerActivity.CUDA] if cuda else [])
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
            self.since = time.perf_counter()
        elif done == self.warmup + self.steps and self.profiler is not None:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
                torch.cuda.synchronize()
            wall = (time.perf_counter() - self.since) / self.steps
            self.profiler.__exit__(None, None, None)
            self.report(cuda)
            print(f"wall time per profiled step: {1e3 * wall:.1f} ms (under the profiler)")
            self.profiler = None

    def report(self, cuda: bool) -> None:
        events = self.profiler.key_averages()
        print(events.table(sort_by="self_cpu_time_total", row_limit=self.row_limit))
        if cuda:
            print(events.table(sort_by="self_cuda_time_total", row_limit=self.row_limit))
        print(f"synchronizing calls per step ({self.steps} steps):")
        for where, n in self.syncs.most_common():
            print(f"  {n / self.steps:6.1f}  {where}")
        if not self.syncs:
            print("  none" if cuda else "  (only counted on CUDA)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-shape", choices=list(MODELS))
    ap.add_argument("--impl", default="ours", choices=["ours", *throughput.TRL_IMPLS])
    ap.add_argument("--loss", default="dpo", help="ours: " + ", ".join(throughput.OURS) + "; TRL: dpo, ipo, simpo")
    ap.add_argument("--lengths", default="fixed", choices=("fixed", "variable"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16-mixed", choices=("32-true", "bf16-mixed"))
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rows", type=int, default=25, help="rows of each profiler table")
    ap.add_argument("--no-cudnn-attention", action="store_true",
                    help="CUDA: keep sdpa off its cuDNN backend (which plans anew for each new shape)")
    a = ap.parse_args(argv)
    if a.no_cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
    max_length, max_prompt_length = throughput.length_limits(a.lengths)
    args = argparse.Namespace(
        batch_size=a.batch_size, total_steps=a.warmup + a.steps, lr=1e-4, lengths=a.lengths, pack="off",
        device=a.device, precision=a.precision, max_length=max_length, max_prompt_length=max_prompt_length)
    torch.set_num_threads(1)
    model, tokenizer = build_model(a.model, seed=0)
    rows = throughput.bench_rows(a.model, args)
    if a.device.startswith("cuda"):
        model = model.to(a.device)
    gate = ProfileGate(a.warmup, a.steps, a.device, a.rows)
    with tempfile.TemporaryDirectory() as cache_root:
        throughput.run_config(a.impl, a.loss, model, tokenizer, rows, args, gate, cache_root)


if __name__ == "__main__":
    main()
