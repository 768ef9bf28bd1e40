"""Benchmark of the chunked LM head (prefopt/scoring/chunked_head.py) against the full logits, A B A B.

For K scored positions, hidden size H and Llama-3's vocabulary V = 128256 (defaults), forward + backward
through the head as in training (gradients to the states and the weight), and forward only as in a
reference pass:
  log_softmax+gather  log_softmax(float(head(h))).gather(target): the textbook path, (K, V) float32
  today               prefopt.scoring.logps.head_logps unmarked: head over all K, TokenLogProb (logits
                      kept in their own dtype for the backward, float32 a chunk at a time)
  chunked             the same call with the head marked (`model.chunked_head`): ChunkedHeadLogProb
Prints the median ms of interleaved rounds, the peak memory the torch allocator held above the start
(benchmarks/memory.py: CPU from the profiler's allocation events, CUDA max_memory_allocated), the max
|error| against log_softmax+gather, and chunked / today ratios.
Run: `python benchmarks/chunked_head.py [--positions 512 --hidden 64 --vocab 128256 --rounds 5 --json F]`.
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
from prefopt.scoring.chunked_head import MARK  # noqa: E402
from prefopt.scoring.logps import head_logps  # noqa: E402


def textbook(head, states, targets):
    return torch.log_softmax(head(states).float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def today(head, states, targets):
    setattr(head, MARK, False)
    return head_logps(head, states, targets)


def chunked(head, states, targets):
    setattr(head, MARK, True)
    return head_logps(head, states, targets)


VARIANTS = {"log_softmax+gather": textbook, "today": today, "chunked": chunked}


def make_case(positions: int, hidden: int, vocab: int, dtype: torch.dtype, device: str):
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden, generator=g) / hidden**0.5)
    states = (torch.randn(positions, hidden, generator=g) * 2).to(device=device, dtype=dtype)
    return head.to(device=device, dtype=dtype), states, torch.randint(0, vocab, (positions,), generator=g).to(device)


def one_call(fn, head, states, targets, train: bool) -> None:
    if not train:
        with torch.no_grad():
            fn(head, states, targets)
        return
    head.zero_grad(set_to_none=True)
    fn(head, states.detach().requires_grad_(True), targets).sum().backward()


def measure(case, train: bool, rounds: int, device: str) -> dict[str, dict]:
    """Per variant: median ms over interleaved rounds, peak MiB, max |error| against the textbook."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for fn in VARIANTS.values():
        one_call(fn, *case, train)  # warm-up
    for _ in range(rounds):
        for name, fn in VARIANTS.items():
            sync()
            start = time.perf_counter()
            one_call(fn, *case, train)
            sync()
            times[name].append(time.perf_counter() - start)
    with torch.no_grad():
        expected = textbook(*case)
        errors = {name: float((fn(*case) - expected).abs().max()) for name, fn in VARIANTS.items()}
    return {name: dict(ms=1e3 * statistics.median(times[name]), max_abs_err=errors[name],
                       peak_mb=peak_mb(lambda: one_call(fn, *case, train), device)) for name, fn in VARIANTS.items()}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=512, help="scored positions K")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for dtype in args.dtypes.split(","):
        case = make_case(args.positions, args.hidden, args.vocab, getattr(torch, dtype), args.device)
        for train in (True, False):
            for name, r in measure(case, train, args.rounds, args.device).items():
                rows.append(dict(variant=name, dtype=dtype, mode="train" if train else "no_grad", **r))
    print(f"K={args.positions} H={args.hidden} V={args.vocab} device={args.device} threads={args.threads} "
          f"rounds={args.rounds}  (one float32 (K, V) tensor = {args.positions * args.vocab * 4 / 2**20:.0f} MiB)")
    print(f"{'mode':8} {'dtype':9} {'variant':20} {'ms':>9} {'peak MiB':>9} {'max |err|':>10} "
          f"{'ms/today':>9} {'mem/today':>9}")
    for r in rows:
        base = next(b for b in rows if b["variant"] == "today" and b["dtype"] == r["dtype"] and b["mode"] == r["mode"])
        print(f"{r['mode']:8} {r['dtype']:9} {r['variant']:20} {r['ms']:9.1f} {r['peak_mb']:9.1f} "
              f"{r['max_abs_err']:10.1e} {r['ms'] / base['ms']:9.2f} {r['peak_mb'] / max(base['peak_mb'], 1e-9):9.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
