"""Prompt-once rows through sdpa with the dense 4D mask against FlexAttention with a block mask.

Times `prefopt.scoring.flex` (the tree rows and the shared-prompt rows through transformers' flex
attention and a BlockMask) against today's sdpa prompt-once passes (the tree rows with the dense mask,
`tree_logps`; the shared-prompt pass, `shared_prompt_logps`), on a random Llama of the given shape and
variable-length pairs; rounds interleaved (A B A B), mean ms with 95% intervals and the paired ratio
sdpa-tree / flex-tree (prefopt's bench_stats). Also prints each pass's largest per-token gap to the
padded rows (sdpa). On CUDA it times forward + backward in `--dtype` (default bfloat16); on the CPU
FlexAttention runs forward only (torch 2.13 has no CPU backward), so the CPU numbers are forward-only,
one thread, and only indicative: the kernel that matters runs on the GPU (scripts/gpu_device_check.sh).

    OMP_NUM_THREADS=1 python benchmarks/flex_shared_prompt.py            # CPU-indicative, tiny shape
    python benchmarks/flex_shared_prompt.py --device cuda --hidden 576 --layers 30 --heads 9 --kv-heads 3 \\
        --pairs 8 --prompt 512 --response 256                            # SmolLM2-135M shape on a GPU
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_stats import mean_interval, ratio_interval  # noqa: E402
from prefopt.data.collate import PairCollator  # noqa: E402
from prefopt.scoring.flex import flex_shared_logps, flex_tree_logps  # noqa: E402
from prefopt.scoring.layout import LayoutChoice  # noqa: E402
from prefopt.scoring.rows import ROWS  # noqa: E402
from prefopt.scoring.shared import SHARED  # noqa: E402
from prefopt.scoring.tree import tree_logps  # noqa: E402

PASSES = {  # name: (attention, scoring function)
    "sdpa-tree": ("sdpa", lambda m, b, pt=False: tree_logps(m, b, n_rows=b["input_ids"].shape[0], per_token=pt)),
    "sdpa-shared": ("sdpa", lambda m, b, pt=False: SHARED.logps(m, b, per_token=pt)),
    "flex-tree": ("flex_attention", lambda m, b, pt=False: flex_tree_logps(m, b, n_rows=b["input_ids"].shape[0],
                                                                             per_token=pt)),
    "flex-shared": ("flex_attention", lambda m, b, pt=False: flex_shared_logps(m, b, per_token=pt)),
}


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on the cpu")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=None)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--prompt", type=int, default=64, help="longest prompt (lengths drawn from half of it up)")
    p.add_argument("--response", type=int, default=64, help="longest response (lengths from a quarter up)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--passes", default="sdpa-tree,sdpa-shared,flex-tree,flex-shared")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    return p.parse_args()


def build(args: argparse.Namespace):
    """(model, batch): a random Llama of the shape and one collated batch of variable-length pairs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads or args.heads,
                         intermediate_size=4 * args.hidden, max_position_embeddings=4 * (args.prompt + args.response),
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device=args.device, dtype=dtype)
    rng = random.Random(0)

    def tokens(longest: int, shortest: int) -> list[int]:
        return [rng.randrange(3, args.vocab) for _ in range(rng.randint(max(1, shortest), longest))]

    items = [{"prompt_ids": tokens(args.prompt, args.prompt // 2), "chosen_ids": tokens(args.response, args.response // 4),
              "rejected_ids": tokens(args.response, args.response // 4), "index": i} for i in range(args.pairs)]
    batch = PairCollator(pad_id=0, layout=LayoutChoice(pack=True))(items)
    return model, {k: v.to(args.device) if torch.is_tensor(v) else v for k, v in batch.items()}


def step(model, batch, name: str, train: bool) -> float:
    """ms of one pass `name` (forward + backward when `train`, else forward without gradients)."""
    attention, fn = PASSES[name]
    model.set_attn_implementation(attention)
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.set_grad_enabled(train):
        logps, _ = fn(model, batch)
        if train:
            logps.sum().backward()
    sync()
    return 1000 * (time.perf_counter() - start)


@torch.no_grad()
def gaps(model, batch, names: list[str]) -> dict[str, float]:
    """Each pass's largest per-token |log p - padded rows' log p| (sdpa padded rows as the reference)."""
    model.set_attn_implementation("sdpa")
    rows, _ = ROWS.logps(model, batch, per_token=True)
    out = {}
    for name in names:
        attention, fn = PASSES[name]
        model.set_attn_implementation(attention)
        out[name] = float((fn(model, batch, True)[0].float() - rows.float()).abs().max())
    return out


def main() -> None:
    args = arguments()
    names = args.passes.split(",")
    model, batch = build(args)
    train = args.device.startswith("cuda")  # FlexAttention has no CPU backward (torch 2.13)
    if not train:  # torch 2.13's CPU FlexAttention kernel does not build with dynamic shapes: one per shape
        torch._dynamo.config.automatic_dynamic_shapes = False
    mode = "forward+backward" if train else "forward only (CPU-indicative: no FlexAttention backward on the CPU)"
    first = {}
    for name in names:  # compiles FlexAttention (once per shape), warms the caches
        start = time.perf_counter()
        step(model, batch, name, train)
        first[name] = time.perf_counter() - start
        for _ in range(args.warmup):
            step(model, batch, name, train)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):  # interleaved: A B A B
        for name in names:
            times[name].append(step(model, batch, name, train))
    result = {"device": args.device, "mode": mode, "shape": vars(args), "first_call_s": first,
              "tokens": {"tree": list(batch["tree_input_ids"].shape), "shared": [list(batch["prompt_ids"].shape),
                                                                              list(batch["response_ids"].shape)]},
              "ms": {name: mean_interval(xs) for name, xs in times.items()}, "max_gap_to_rows": gaps(model, batch, names)}
    if "sdpa-tree" in times and "flex-tree" in times:
        result["ratio_sdpa_tree_over_flex_tree"] = ratio_interval(times["sdpa-tree"], times["flex-tree"])
    report(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


def report(result: dict) -> None:
    print(f"{result['device']}: {result['mode']}; tree rows {result['tokens']['tree']}, "
          f"shared rows {result['tokens']['shared']}")
    for name, (mean, low, high) in result["ms"].items():
        print(f"  {name:12s} {mean:9.2f} ms  [{low:.2f}, {high:.2f}]  first call {result['first_call_s'][name]:.1f} s"
              f"  max |Δ log p| vs padded rows {result['max_gap_to_rows'][name]:.2e}")
    if "ratio_sdpa_tree_over_flex_tree" in result:
        ratio, low, high = result["ratio_sdpa_tree_over_flex_tree"]
        print(f"  sdpa-tree / flex-tree: {ratio:.2f}x  [{low:.2f}, {high:.2f}]  (> 1: flex faster)")


if __name__ == "__main__":
    main()
