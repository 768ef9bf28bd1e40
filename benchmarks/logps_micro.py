"""Micro-benchmark of per-token log-probs through the LM head: time and peak memory, A B A B.

Compares, for K scored positions, hidden size H and vocabulary V (forward + backward through the
head, as in training, and forward only, as in a reference or marginal pass):
  log_softmax+gather    log_softmax(float(head(h))).gather(target)         (plain autograd)
  gather-logsumexp      float(head(h)).gather(target) - logsumexp(...)     (plain autograd)
  prefopt               prefopt.scoring.logps.head_logps (TokenLogProb: chunked float32, logits saved in
                        their own dtype; head in chunks without gradients)
in float32 and bfloat16 (max |err|: against log_softmax+gather on the same logits). Peak memory is what the torch allocator held above the start (CPU: from the
profiler's allocation events). Run: `python benchmarks/logps_micro.py [--positions 2048] [--json F]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from memory import peak_mb  # noqa: E402
from prefopt.scoring.logps import head_logps  # noqa: E402


def log_softmax_gather(head, states, targets, chunk_size):
    return torch.log_softmax(head(states).float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def gather_logsumexp(head, states, targets, chunk_size):
    logits = head(states).float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def prefopt_lean(head, states, targets, chunk_size):
    return head_logps(head, states, targets, chunk_size)


VARIANTS = {"log_softmax+gather": log_softmax_gather, "gather-logsumexp": gather_logsumexp, "prefopt": prefopt_lean}


def make_case(positions: int, hidden: int, vocab: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden, generator=g) / hidden**0.5)
    head = head.to(device=device, dtype=dtype)
    states = (torch.randn(positions, hidden, generator=g) * 2).to(device=device, dtype=dtype)
    targets = torch.randint(0, vocab, (positions,), generator=g).to(device)
    return head, states, targets


def one_call(fn, head, states, targets, chunk_size, train: bool):
    if train:
        x = states.detach().requires_grad_(True)
        head.zero_grad(set_to_none=True)
        fn(head, x, targets, chunk_size).sum().backward()
    else:
        with torch.no_grad():
            fn(head, states, targets, chunk_size)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=2048, help="scored positions K per call")
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        head, states, targets = make_case(args.positions, args.hidden, args.vocab, dtype, args.device)
        with torch.no_grad():
            expected = log_softmax_gather(head, states, targets, None)
        for train in (True, False):
            times: dict[str, list[float]] = {name: [] for name in VARIANTS}
            for name, fn in VARIANTS.items():  # warm-up
                one_call(fn, head, states, targets, args.chunk_size, train)
            for _ in range(args.rounds):  # interleaved: A B C A B C ...
                for name, fn in VARIANTS.items():
                    sync()
                    t0 = time.perf_counter()
                    one_call(fn, head, states, targets, args.chunk_size, train)
                    sync()
                    times[name].append(time.perf_counter() - t0)
            for name, fn in VARIANTS.items():
                mem = peak_mb(lambda: one_call(fn, head, states, targets, args.chunk_size, train), args.device)
                with torch.no_grad():
                    err = float((fn(head, states, targets, args.chunk_size) - expected).abs().max())
                rows.append(
                    dict(variant=name, dtype=dtype_name, mode="train" if train else "no_grad",
                         ms=1e3 * statistics.median(times[name]), peak_mb=mem, max_abs_err=err)
                )
    logits_mb = args.positions * args.vocab * 4 / 2**20
    print(f"K={args.positions} H={args.hidden} V={args.vocab} chunk={args.chunk_size} device={args.device} "
          f"threads={args.threads}  (one float32 (K, V) tensor = {logits_mb:.0f} MiB)")
    print(f"{'mode':8} {'dtype':9} {'variant':20} {'ms':>9} {'peak MiB':>9} {'max |err|':>12}")
    for r in rows:
        err = f"{r['max_abs_err']:.1e}"
        print(f"{r['mode']:8} {r['dtype']:9} {r['variant']:20} {r['ms']:9.1f} {r['peak_mb']:9.0f} {err:>12}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
