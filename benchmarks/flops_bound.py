"""How much faster ours can be than TRL's GPU path by arithmetic alone: the ratio of model FLOPs per step.

For one benchmark size and length mode, from the benchmark's own pairs (benchmarks/synthetic.py) and
the padded shares a `throughput.py --json` run measured: the linear layers' FLOPs (2 x weights per
token through the transformer, 2 x the LM head's weights per response token; attention, a few percent
at these lengths, left out) of a training step, forward + backward = 3 x forward, plus a forward for a
live reference. TRL's GPU path runs full prompt+response rows (its padding) and scores only completion
tokens; ours runs each prompt once (shared-prompt layout with its padding, or the prompt-once packed
layout with its own). At equal FLOP efficiency a measured ratio would equal the printed one.

    python benchmarks/flops_bound.py                                   # small, variable lengths
    python benchmarks/flops_bound.py --model tiny --json bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from synthetic import build_model  # noqa: E402
from throughput import bench_rows, token_lengths  # noqa: E402


def padded_share(rows: list[dict], model: str, lengths: str, impl: str, loss: str) -> float:
    match = [r for r in rows if (r["model"], r["lengths"], r["impl"], r["loss"]) == (model, lengths, impl, loss)]
    if not match:
        raise SystemExit(f"flops_bound: no {impl} {loss} row for {model}/{lengths} in the JSON (run throughput.py "
                         f"with --lengths {lengths} and --losses {loss})")
    return match[0]["padded_share"]


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small", choices=("tiny", "small"))
    ap.add_argument("--lengths", default="variable", choices=("fixed", "variable"))
    ap.add_argument("--json", type=Path, default=HERE / "throughput_results.json", help="a throughput.py --json file")
    args = ap.parse_args(argv)
    measured = json.loads(args.json.read_text())
    shares = {name: padded_share(measured, args.model, args.lengths, impl, loss) for name, impl, loss in (
        ("trl", "trl-gpu-path", "dpo"), ("shared", "ours", "dpo"), ("packed", "ours", "dpo+pack"))}
    steps = argparse.Namespace(lengths=args.lengths, batch_size=4, total_steps=26)
    lengths = token_lengths(bench_rows(args.model, steps))
    model, _ = build_model(args.model)
    head = model.get_output_embeddings()
    body = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    p, c, r = (statistics.fmean(x[i] for x in lengths) for i in range(3))

    def flops(tokens: float, passes: int) -> float:  # one pair; passes 3: forward + backward, 1: forward
        return passes * (2 * body * tokens + 2 * head.weight.numel() * (c + r))

    tuned = [r for r in measured if (r["model"], r["lengths"], r["impl"], r["loss"]) ==
             (args.model, args.lengths, "trl-tuned-gpu-path", "dpo")]  # its length grouping pads less
    trl_rows = (2 * p + c + r) / (1 - shares["trl"])
    tuned_rows = (2 * p + c + r) / (1 - (tuned[0]["padded_share"] if tuned else shares["trl"]))
    layouts = {"shared prompt": (p + c + r) / (1 - shares["shared"]), "packed": (p + c + r) / (1 - shares["packed"])}
    out = {}
    print(f"{args.model}, {args.lengths}: mean prompt {p:.0f}, chosen {c:.0f}, rejected {r:.0f} tokens; "
          f"padded share TRL {shares['trl']:.0%}, ours {shares['shared']:.0%} (shared prompt), {shares['packed']:.0%} (packed)")
    for name, tokens in layouts.items():
        out[f"{name}, live reference"] = (flops(trl_rows, 3) + flops(trl_rows, 1)) / (flops(tokens, 3) + flops(tokens, 1))
        out[f"{name}, cached reference"] = (flops(trl_rows, 3) + flops(trl_rows, 1)) / flops(tokens, 3)
        out[f"{name}, both references precomputed"] = flops(tuned_rows, 3) / flops(tokens, 3)
    for name, ratio in out.items():  # precomputed: TRL with precompute_ref_log_probs and its length grouping
        print(f"  TRL's GPU path / ours ({name}): {ratio:.2f}x the model FLOPs")
    print(f"  the LM head's share of our step (packed): {flops(0, 3) / flops(layouts['packed'], 3):.0%}")
    return out


if __name__ == "__main__":
    main()
