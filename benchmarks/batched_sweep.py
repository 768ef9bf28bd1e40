"""Prototype and measurement (issue 30, item 1): R sort-task DPO runs trained as ONE batched model.

The sort study is hundreds of short runs of one tiny Llama (2 layers, d=64); a run's steps are small
torch operations. Here R runs that share a seed (hence batches and start policy) and differ in β and lr
are trained together, as in HFTA (Wang et al., MLSys 2021) and torch.func model ensembling:
- `FlatParams`: the R runs' weights in one (R, P) buffer, each Llama weight a (R, ...) view of it, its
  gradient a view of an (R, P) gradient buffer (autograd accumulates into it in place);
- `BatchedLlama`: the HF Llama forward (RMSNorm, rotary embeddings, GQA, SwiGLU MLP, tied head) with a
  leading run dimension: torch.bmm per linear layer, runs folded into the attention batch;
- `BatchedAdamW`: torch.optim.AdamW's update on the whole buffer, each run with its own lr (warmup +
  cosine of prefopt.train.optim), per-run gradient-norm clipping, weight decay on matrices only;
- `dpo_losses`: −logσ(β((s_w − ref_w) − (s_l − ref_l))) with a per-run β, references computed once.
The baseline is R separate runs, each a plain PyTorch loop (not Lightning) of the HF model,
prefopt.scoring.logps.response_logps, torch.optim.AdamW, clip_grad_norm_ and the project's schedule, on the
same pre-collated batches (reference log-probs precomputed for both sides; data loading excluded).
Rounds interleave batched and separate (A B A B) on one thread; ratios are per round. Also measured: the
largest weight difference of each of 15 batched runs from the same run alone after 20 steps; the matmul and
attention kernels' share of a run-step (torch.profiler: the floor batching cannot go below); the real
`python src/run.py data=sort loss=dpo` wall time per run (Lightning, evaluation included) for context.

Outcome (2 shared cores, 8 rounds, 2026-12): batching did not pay on the CPU. Batched / separate
run-steps/s: R=1 1.15x [1.01, 1.32] (the hand-written forward alone), R=5 1.11x [1.04, 1.18], R=15 1.01x
[0.96, 1.06]. At R=15 the elementwise work on (15, 800, 256) activations is memory-bound where one run's
fits in cache, and the matmul + attention kernels of a batched run-step alone take 8.1 ms against a whole
separate run-step's 15.0 ms (profiled), so removing every other operation would give at most ~1.9x,
short of the 3x this prototype had to show (issue 30). So there is no src/prefopt/batched/. (A one-off
try of torch.compile on the batched forward, not in this script: ~10% off the batched step, R=15 ~1.0x.)

Run: `python benchmarks/batched_sweep.py [--rounds 6] [--steps 30] [--runpy 2] [--json F]`.
Exercised by `pytest tests/test_batched_proto.py` (logits equal HF per run; AdamW equal torch per run).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prefopt.train.optim import warmup_cosine  # noqa: E402

# The gradient views have the (R, P) buffer's row stride, not a dense one: autograd warns, then adds in place.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")

DPO_BETAS = (0.1, 0.3, 1.0, 3.0, 10.0)  # conf/sweep/beta_sensitivity.yaml, DPO's grid: 5 β × 3 lr = 15 runs
DPO_LRS = (3.0e-5, 1.0e-4, 3.0e-4)


# ----------------------------------------------------------------------------- the batched model


def llama_shapes(config) -> dict[str, tuple[int, ...]]:
    """HF parameter names -> shapes of a LlamaForCausalLM with tied embeddings (lm_head left out)."""
    d, f, hd = config.hidden_size, config.intermediate_size, config.hidden_size // config.num_attention_heads
    kv = config.num_key_value_heads * hd
    shapes = {"model.embed_tokens.weight": (config.vocab_size, d)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,), p + "self_attn.q_proj.weight": (d, d),
            p + "self_attn.k_proj.weight": (kv, d), p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, d), p + "post_attention_layernorm.weight": (d,),
            p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d), p + "mlp.down_proj.weight": (d, f),
        })
    shapes["model.norm.weight"] = (d,)
    return shapes


class FlatParams:
    """R runs' weights in one (R, P) buffer `data`, gradients in `grad`; `views[name]` (R, *shape) are
    leaf tensors on both, so a step's optimizer and clipping are a few operations on whole buffers."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], runs: int) -> None:
        sizes = {n: math.prod(s) for n, s in shapes.items()}
        total = sum(sizes.values())
        self.data, self.grad = torch.zeros(runs, total), torch.zeros(runs, total)
        self.decay_mask = torch.zeros(1, total)  # 1 on matrices (ndim >= 2), as PreferenceModule groups them
        self.views: dict[str, Tensor] = {}
        offset = 0
        for name, shape in shapes.items():
            cols = slice(offset, offset + sizes[name])
            view = self.data[:, cols].view(runs, *shape).requires_grad_(True)
            view.grad = self.grad[:, cols].view(runs, *shape)
            self.views[name] = view
            self.decay_mask[:, cols] = float(len(shape) >= 2)
            offset += sizes[name]

    def load(self, state_dicts: list[dict[str, Tensor]]) -> None:
        """Run r's weights from state_dicts[r] (HF names)."""
        with torch.no_grad():
            for name, view in self.views.items():
                view.copy_(torch.stack([sd[name] for sd in state_dicts]))

    def zero_grad(self) -> None:
        self.grad.zero_()


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """x (R, T, in) @ weight (R, out, in)ᵀ -> (R, T, out): one batched matmul for all runs."""
    return torch.bmm(x, weight.transpose(1, 2))


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return weight[:, None, :] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotary(length: int, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """(cos, sin) (L, head_dim) of HF's default rotary embedding at positions 0..L-1."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    freqs = torch.arange(length, dtype=torch.float)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class BatchedLlama:
    """The forward of R LlamaForCausalLM (tied embeddings, default RoPE, no biases) of one config."""

    def __init__(self, config, runs: int) -> None:
        self.config, self.runs = config, runs
        self.params = FlatParams(llama_shapes(config), runs)
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.theta = float(getattr(config, "rope_parameters", None) and config.rope_parameters["rope_theta"]
                           or getattr(config, "rope_theta", 10000.0))

    def w(self, name: str) -> Tensor:
        return self.params.views[name]

    def attention(self, h: Tensor, prefix: str, shape: tuple[int, int], cos: Tensor, sin: Tensor) -> Tensor:
        """Causal self-attention of (R, N·L, D) states, the R·N sequences in one sdpa batch. Right padding
        only: causal attention alone gives every real position what HF's padding mask gives it."""
        (n, length), r, hd = shape, self.runs, self.head_dim
        q = linear(h, self.w(prefix + "q_proj.weight")).view(r * n, length, self.heads, hd).transpose(1, 2)
        k = linear(h, self.w(prefix + "k_proj.weight")).view(r * n, length, self.kv_heads, hd).transpose(1, 2)
        v = linear(h, self.w(prefix + "v_proj.weight")).view(r * n, length, self.kv_heads, hd).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return linear(out.transpose(1, 2).reshape(r, n * length, self.heads * hd), self.w(prefix + "o_proj.weight"))

    def mlp(self, h: Tensor, prefix: str) -> Tensor:
        gate, up = linear(h, self.w(prefix + "gate_proj.weight")), linear(h, self.w(prefix + "up_proj.weight"))
        return linear(F.silu(gate) * up, self.w(prefix + "down_proj.weight"))

    def logits(self, input_ids: Tensor) -> Tensor:
        """(R, N, L, V) logits of each run for the same input_ids (N, L)."""
        n, length = input_ids.shape
        embed = self.w("model.embed_tokens.weight")
        x = embed.index_select(1, input_ids.reshape(-1))  # (R, N·L, D)
        cos, sin = rotary(length, self.head_dim, self.theta)
        for i in range(self.config.num_hidden_layers):
            p = f"model.layers.{i}."
            x = x + self.attention(rms_norm(x, self.w(p + "input_layernorm.weight"), self.eps),
                                   p + "self_attn.", (n, length), cos, sin)
            x = x + self.mlp(rms_norm(x, self.w(p + "post_attention_layernorm.weight"), self.eps), p + "mlp.")
        x = rms_norm(x, self.w("model.norm.weight"), self.eps)
        return torch.bmm(x, embed.transpose(1, 2)).view(self.runs, n, length, -1)

    def response_logps(self, input_ids: Tensor, score_mask: Tensor) -> Tensor:
        """(R, N) summed log-probs of the tokens marked in score_mask, as prefopt.scoring.logps does."""
        logp = self.logits(input_ids)[:, :, :-1].log_softmax(-1)
        targets = input_ids[None, :, 1:, None].expand(self.runs, -1, -1, 1)
        return (logp.gather(-1, targets).squeeze(-1) * score_mask[None, :, 1:]).sum(-1)


# ----------------------------------------------------------------------------- optimizer and loss


class BatchedAdamW:
    """torch.optim.AdamW (single-tensor algorithm) on a FlatParams buffer with per-run lr (R,), times
    `schedule(step)` (0-based, as LambdaLR), decoupled weight decay on matrices only, and per-run
    gradient-norm clipping (`clip_`, as torch.nn.utils.clip_grad_norm_ on one run's parameters)."""

    def __init__(self, params: FlatParams, lr: Tensor, betas=(0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, schedule: Callable[[int], float] = lambda step: 1.0) -> None:
        self.params, self.lr, self.betas, self.eps = params, lr.float()[:, None], betas, eps
        self.decay = weight_decay * params.decay_mask
        self.schedule, self.steps = schedule, 0
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(params.data), torch.zeros_like(params.data)

    @torch.no_grad()
    def clip_(self, max_norm: Tensor) -> Tensor:
        """Scale each run's gradient to norm <= max_norm (R,); returns the norms before clipping."""
        norms = self.params.grad.norm(dim=1)
        self.params.grad.mul_((max_norm / (norms + 1e-6)).clamp(max=1.0)[:, None])
        return norms

    @torch.no_grad()
    def step(self) -> None:
        (b1, b2), p, g = self.betas, self.params.data, self.params.grad
        lr = self.lr * self.schedule(self.steps)
        self.steps += 1
        if self.decay.any():
            p.mul_(1 - lr * self.decay)
        self.exp_avg.lerp_(g, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - b2 ** self.steps)).add_(self.eps)
        p.sub_(self.exp_avg / denom * (lr / (1 - b1 ** self.steps)))


def dpo_losses(logps: Tensor, ref: Tensor, beta: Tensor) -> Tensor:
    """Per-run mean DPO loss (R,): logps (R, 2B) rows chosen then rejected, ref (2B,), beta (R,)."""
    ratio = logps - ref
    half = ratio.shape[1] // 2
    return -F.logsigmoid(beta[:, None] * (ratio[:, :half] - ratio[:, half:])).mean(1)


def schedule_for(total_steps: int, warmup_ratio: float = 0.1) -> Callable[[int], float]:
    """conf/train.yaml's warmup + cosine multiplier (prefopt.train.optim.warmup_cosine_schedule)."""
    warmup = int(warmup_ratio * total_steps)
    return lambda step: warmup_cosine(step, total_steps, warmup)


# ----------------------------------------------------------------------------- the two trainers


def batched_trainer(start_state: dict, config, betas: list[float], lrs: list[float], total_steps: int,
                    clip: float = 1.0, weight_decay: float = 0.0):
    """(model, step function) of R = len(betas) runs from one start policy; step(batch, ref) -> losses (R,)."""
    model = BatchedLlama(config, len(betas))
    model.params.load([start_state] * len(betas))
    opt = BatchedAdamW(model.params, torch.tensor(lrs), weight_decay=weight_decay, schedule=schedule_for(total_steps))
    beta, max_norm = torch.tensor(betas), torch.full((len(betas),), clip)

    def step(batch: dict, ref: Tensor) -> Tensor:
        model.params.zero_grad()
        losses = dpo_losses(model.response_logps(batch["input_ids"], batch["score_mask"]), ref, beta)
        losses.sum().backward()
        opt.clip_(max_norm)
        opt.step()
        return losses.detach()

    return model, step


def separate_trainer(start_model, beta: float, lr: float, total_steps: int, clip: float = 1.0,
                     weight_decay: float = 0.0):
    """(model, step function) of one plain-PyTorch run: HF model, torch AdamW, clip_grad_norm_, LambdaLR."""
    from prefopt.scoring.logps import response_logps
    from prefopt.train.optim import warmup_cosine_schedule

    model = copy.deepcopy(start_model).train()
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2]},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    sched = warmup_cosine_schedule(opt, total_steps=total_steps, warmup_ratio=0.1)
    beta_t = torch.tensor([beta])

    def step(batch: dict, ref: Tensor) -> Tensor:
        logps, _ = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["score_mask"])
        loss = dpo_losses(logps[None], ref, beta_t)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        return loss.detach()

    return model, step


# ----------------------------------------------------------------------------- the sort task's data


def sort_batches(n_batches: int, seed: int = 0, batch_size: int = 16, max_length: int = 32,
                 max_prompt_length: int = 16) -> tuple[list[dict], Path]:
    """The sort task's real pair batches (conf/data/sort.yaml shapes, padded layout as on CPUs), shuffled
    with `seed`, and the SFT policy folder; from the cache of `python src/run.py data=sort` (run it once)."""
    from prefopt.data.collate import PairCollator
    from prefopt.scoring.marginal import MarginalRows
    from prefopt.data.datamodule import start_and_pad_ids, tokenize_rows
    from prefopt.tasks.base import load_pairs_split
    from transformers import AutoTokenizer

    cache = Path(os.environ.get("PREFOPT_CACHE", ROOT / ".cache" / "prefopt"))
    pairs = sorted(cache.glob("sort_pairs/*/pairs.jsonl"))
    policies = sorted(cache.glob("sort_sft/*/config.json"))
    if len(pairs) != 1 or len(policies) != 1:
        raise SystemExit(f"need exactly one sort_pairs and one sort_sft in {cache}: run `python src/run.py "
                         f"data=sort trainer.max_steps=2` first (found {len(pairs)}, {len(policies)})")
    tok = AutoTokenizer.from_pretrained(policies[0].parent)
    train_rows, _ = load_pairs_split(pairs[0], 0.05)
    items, _ = tokenize_rows(train_rows, tok, max_length, max_prompt_length, "train")
    start, pad = start_and_pad_ids(tok)
    collate = PairCollator(pad, marginal=MarginalRows([start, *tok(">", add_special_tokens=False)["input_ids"]]))
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    return [collate([items[j] for j in order[i * batch_size:(i + 1) * batch_size]]) for i in range(n_batches)], \
        policies[0].parent


@torch.no_grad()
def reference_logps(model, batches: list[dict]) -> list[Tensor]:
    """The frozen start policy's summed response log-probs per batch (computed once, shared by all runs)."""
    from prefopt.scoring.logps import response_logps

    model.eval()
    return [response_logps(model, b["input_ids"], b["attention_mask"], b["score_mask"])[0] for b in batches]


# ----------------------------------------------------------------------------- measurements


def grid(runs: int) -> tuple[list[float], list[float]]:
    """(betas, lrs) of the first `runs` points of DPO's β × lr grid."""
    points = [(b, lr) for lr in DPO_LRS for b in DPO_BETAS][:runs]
    return [b for b, _ in points], [lr for _, lr in points]


def timed(step: Callable, batches: list[dict], refs: list[Tensor], steps: int, warm: int = 2) -> float:
    """Seconds per step of `step` over batches[warm:steps] after `warm` untimed steps."""
    for i in range(warm):
        step(batches[i], refs[i])
    start = time.perf_counter()
    for i in range(warm, steps):
        step(batches[i], refs[i])
    return (time.perf_counter() - start) / (steps - warm)


def measure(start_model, batches, refs, runs_list: list[int], rounds: int, steps: int) -> dict:
    """Per R: rounds of [batched R runs, one separate run] (A B A B); run-steps/s (medians) and the paired
    ratio batched / separate with its 95% interval (bench_stats.ratio_interval)."""
    from bench_stats import ratio_interval

    state, out = start_model.state_dict(), {}
    for runs in runs_list:
        betas, lrs = grid(runs)
        batched, alone = [], []
        for r in range(rounds):
            batched.append(runs / timed(batched_trainer(state, start_model.config, betas, lrs, 200)[1],
                                        batches, refs, steps))
            k = r % runs
            alone.append(1 / timed(separate_trainer(start_model, betas[k], lrs[k], 200)[1], batches, refs, steps))
        ratio = ratio_interval(batched, alone) if rounds > 1 else (batched[0] / alone[0],) * 3
        out[runs] = {"batched_run_steps_per_s": statistics.median(batched),
                     "separate_run_steps_per_s": statistics.median(alone), "ratio": ratio[0],
                     "ratio_95": ratio[1:], "rounds": rounds}
        print(f"R={runs}: {out[runs]}", flush=True)
    return out


def equality_check(start_model, batches, refs, runs: int = 15, steps: int = 20) -> dict:
    """Largest |w_batched[k] - w_alone| over every run k and weight after `steps` steps."""
    betas, lrs = grid(runs)
    model, step = batched_trainer(start_model.state_dict(), start_model.config, betas, lrs, 200)
    for i in range(steps):
        step(batches[i], refs[i])
    worst, scale = 0.0, 0.0
    for k in range(runs):
        alone, step_k = separate_trainer(start_model, betas[k], lrs[k], 200)
        for i in range(steps):
            step_k(batches[i], refs[i])
        sd = alone.state_dict()
        for name, view in model.params.views.items():
            worst = max(worst, (view[k].detach() - sd[name]).abs().max().item())
            scale = max(scale, (sd[name] - start_model.state_dict()[name]).abs().max().item())
    return {"runs": runs, "steps": steps, "max_abs_weight_diff": worst, "max_abs_weight_change": scale}


KERNELS = ("aten::bmm", "aten::mm", "aten::_scaled_dot_product_flash_attention_for_cpu")  # + their backward


def kernel_share(step: Callable, batches: list[dict], refs: list[Tensor], runs: int, steps: int = 8) -> dict:
    """ms per run-step of the whole step and of its matmul and attention kernels (torch.profiler self
    time, forward and backward): what batching cannot remove, however few the operations around them."""
    from torch.profiler import profile

    for i in range(2):
        step(batches[i], refs[i])
    with profile() as prof:
        for i in range(2, 2 + steps):
            step(batches[i], refs[i])
    events = prof.key_averages()
    per = 1e-3 / (steps * runs)  # profiler µs -> ms per run-step
    total = sum(e.self_cpu_time_total for e in events) * per
    kernels = sum(e.self_cpu_time_total for e in events if e.key.startswith(KERNELS)) * per
    return {"total_ms": total, "matmul_attention_ms": kernels}


def kernel_shares(start_model, batches, refs, runs: int = 15) -> dict:
    betas, lrs = grid(runs)
    return {"batched": kernel_share(batched_trainer(start_model.state_dict(), start_model.config, betas, lrs, 200)[1],
                                    batches, refs, runs),
            "separate": kernel_share(separate_trainer(start_model, betas[0], lrs[0], 200)[1], batches, refs, 1)}


def time_runpy(repeats: int) -> list[dict]:
    """Wall seconds of the real `python src/run.py data=sort loss=dpo` 200-step run (warm cache, Lightning,
    evaluation included) and the training steps/s its last progress line reports."""
    cmd = [sys.executable, "src/run.py", "data=sort", "loss=dpo", "trainer.max_steps=200",
           "checkpoint.enabled=false", "logger=none"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    out = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:  # a fresh folder: a completed one is skipped
            start = time.perf_counter()
            done = subprocess.run(cmd + [f"hydra.run.dir={folder}"], cwd=ROOT, env=env, check=True,
                                  capture_output=True, text=True)
            wall = time.perf_counter() - start
        rates = re.findall(r"\(([0-9.]+) steps/s\)", done.stdout + done.stderr)
        out.append({"wall_s": wall, "logged_steps_per_s": float(rates[-1]) if rates else None})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=30, help="steps per timing (2 of them untimed warm-up)")
    parser.add_argument("--runs", default="1,5,15")
    parser.add_argument("--runpy", type=int, default=2, help="timed run.py runs (0: none)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM

    batches, policy = sort_batches(max(args.steps, 20))
    start_model = AutoModelForCausalLM.from_pretrained(policy)
    refs = reference_logps(start_model, batches)
    shapes = sorted({tuple(b["input_ids"].shape) for b in batches})
    print(f"batch shapes (rows, tokens): {shapes}", flush=True)
    result = {"batch_shapes": shapes, "equality": equality_check(start_model, batches, refs)}
    print(f"equality: {result['equality']}", flush=True)
    result["throughput"] = measure(start_model, batches, refs, [int(r) for r in args.runs.split(",")],
                                   args.rounds, args.steps)
    result["kernel_share_R15"] = kernel_shares(start_model, batches, refs)
    print(f"ms per run-step, R=15 (profiled): {result['kernel_share_R15']}", flush=True)
    if args.runpy:
        result["runpy_wall_s"] = time_runpy(args.runpy)
        print(f"run.py per run: {result['runpy_wall_s']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
