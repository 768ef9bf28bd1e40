"""A chunked LM head for the scored tokens: log p(target) from hidden states and the head's weight without
the (tokens × vocabulary) logits (`model.chunked_head`).

Today's path (prefopt.scoring.logps `head_logps`) runs the head once over the K scored positions while
training, so a (K, V) logits tensor lives from the forward to the backward: 4096 tokens at Llama-3's
128256 vocabulary are 2.1 GB in float32 (1 GB in bf16), plus its float32 softmax in the backward.
`ChunkedHeadLogProb` never builds it:

- forward: `rows` positions at a time, logits in float32 (a bf16 matmul under bf16 weights or autocast,
  upcast per chunk), their logsumexp and the target's logit; it saves the states, the weight and the K
  logsumexps only;
- backward: `cols` vocabulary entries at a time over all K positions, recomputes that block of logits,
  its softmax from the saved logsumexp, d logits = g·(onehot(target) - softmax), and from it the block's
  rows of d weight (written once, in the weight's dtype) and its share of d states (summed in float32).

Peak memory is O(CHUNK_ELEMENTS) = 8M float32 logits (32 MiB) on top of the inputs, at any K and V; the
price is the head's matmul once more in the backward (4 head matmuls a step instead of 3). Gradients flow
to the states, the weight (a tied input embedding accumulates it as usual) and a bias; the model's logit
multiplier and soft cap (prefopt.scoring.logps.ScaledHead: Cohere, Granite, Gemma 2/3) are applied per chunk.
No host synchronisation: the target's block is picked with a clamp and a mask, not by indexing.

`enable_chunked_head(model, setting)` marks the model's `nn.Linear` LM head (true, or "auto" from a
vocabulary of AUTO_MIN_VOCAB = 32000 on: Mistral, SmolLM2, Llama 3; false: never); a frozen copy
(deepcopy) and a peft wrapper keep the mark. `chunked_head_logps(head, states, targets)` is the hook
prefopt.scoring.logps `head_logps` calls: None (today's path) unless the head is marked and its weight is
a plain tensor (not sharded by FSDP / ZeRO-3; a LoRA'd lm_head is no nn.Linear and keeps today's path).
Exercised by `pytest tests/test_chunked_head.py`; measured by `python benchmarks/chunked_head.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.errors import ConfigError

MARK = "prefopt_chunked_head"  # attribute set on the LM head's nn.Linear: True = chunked
AUTO_MIN_VOCAB = 32000  # "auto" turns the chunked head on from this vocabulary size (model=tiny: off)
CHUNK_ELEMENTS = 1 << 23  # float32 logits per chunk: 8M = 32 MiB (64 positions at 128256 entries)
MIN_COLS = 128  # vocabulary entries per backward block, at least (matmuls stay efficient at huge K)


@dataclass(frozen=True)
class HeadSpec:
    """How the logits are made: chunk sizes, compute dtype and the model's transform of the logits."""

    rows: int  # positions per forward chunk
    cols: int  # vocabulary entries per backward block
    dtype: torch.dtype  # the matmuls' dtype (the weight's, or autocast's)
    multiply: float = 1.0
    softcap: float | None = None


def _transform(z: Tensor, spec: HeadSpec) -> tuple[Tensor, Tensor | float]:
    """float32 logits from the head's raw output `z` (float32), and d logits / d z (1.0: the identity)."""
    if spec.softcap:
        t = torch.tanh(z * (spec.multiply / spec.softcap))
        return t * spec.softcap, (1 - t * t) * spec.multiply
    if spec.multiply != 1.0:
        return z * spec.multiply, spec.multiply
    return z, 1.0


def _raw(states: Tensor, weight: Tensor, bias: Tensor | None, spec: HeadSpec) -> Tensor:
    """states @ weightᵀ + bias in the compute dtype, as float32."""
    b = bias.to(spec.dtype) if bias is not None else None
    return F.linear(states.to(spec.dtype), weight.to(spec.dtype), b).float()


def _forward(states: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
             spec: HeadSpec) -> tuple[Tensor, Tensor]:
    """(log p(target) (K,), logsumexp (K,)), both float32, `spec.rows` positions at a time."""
    out = torch.empty(states.shape[0], dtype=torch.float32, device=states.device)
    lse = torch.empty_like(out)
    for i in range(0, states.shape[0], spec.rows):
        logits, _ = _transform(_raw(states[i:i + spec.rows], weight, bias, spec), spec)
        lse[i:i + spec.rows] = torch.logsumexp(logits, dim=-1)
        out[i:i + spec.rows] = logits.gather(-1, targets[i:i + spec.rows, None]).squeeze(-1) - lse[i:i + spec.rows]
    return out, lse


def _block_grad(z: Tensor, lse: Tensor, g: Tensor, targets: Tensor, start: int, spec: HeadSpec) -> Tensor:
    """d loss / d z of one vocabulary block [start, start + width) (float32, in place of `z`):
    g·(onehot(target) - softmax) through the logits' transform."""
    logits, slope = _transform(z, spec)
    width = z.shape[1]
    grad = logits.sub_(lse[:, None]).exp_().mul_(-g[:, None])  # -g·softmax (logits' storage reused)
    inside = (targets >= start) & (targets < start + width)  # targets in this block: a mask, no sync
    column = (targets - start).clamp(0, width - 1)[:, None]
    grad.scatter_add_(1, column, (g * inside)[:, None])
    return grad if isinstance(slope, float) and slope == 1.0 else grad.mul_(slope)


class ChunkedHeadLogProb(torch.autograd.Function):
    """log softmax(transform(states @ weightᵀ + bias))[target] in float32, never holding (K, V) logits.
    Inputs: states (K, H), weight (V, H), bias (V,) or None, targets (K,) int64, a HeadSpec."""

    @staticmethod
    def forward(ctx, states, weight, bias, targets, spec):  # type: ignore[override]
        with torch.autocast(states.device.type, enabled=False):
            out, lse = _forward(states, weight, bias, targets, spec)
        ctx.save_for_backward(states, weight, bias, targets, lse)
        ctx.spec = spec
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        states, weight, bias, targets, lse = ctx.saved_tensors
        with torch.autocast(states.device.type, enabled=False):
            grads = _backward(states, weight, bias, targets, lse, grad_out.float(), ctx.spec, ctx.needs_input_grad)
        return (*grads, None, None)


def _backward(states, weight, bias, targets, lse, g, spec: HeadSpec, needs) -> tuple:
    """(d states, d weight, d bias) by vocabulary blocks of `spec.cols` entries (None where not needed)."""
    d_states = torch.zeros(states.shape, dtype=torch.float32, device=states.device) if needs[0] else None
    d_weight = torch.empty_like(weight) if needs[1] else None
    d_bias = torch.empty_like(bias) if bias is not None and needs[2] else None
    h = states.to(spec.dtype)
    for start in range(0, weight.shape[0], spec.cols):
        stop = start + spec.cols
        w = weight[start:stop].to(spec.dtype)
        z = F.linear(h, w, bias[start:stop].to(spec.dtype) if bias is not None else None).float()
        grad = _block_grad(z, lse, g, targets, start, spec)
        if d_bias is not None:
            d_bias[start:stop] = grad.sum(0)
        grad = grad.to(spec.dtype)
        if d_weight is not None:
            d_weight[start:stop] = grad.t().mm(h)
        if d_states is not None and spec.dtype == torch.float32:
            d_states.addmm_(grad, w)
        elif d_states is not None:
            d_states += grad.mm(w).float()  # each block's share rounded once, the sum in float32
    return (d_states.to(states.dtype) if d_states is not None else None), d_weight, d_bias


def head_parts(head: torch.nn.Module) -> tuple[torch.nn.Linear, float, float | None] | None:
    """(the marked nn.Linear, logit multiplier, soft cap) of an LM head, or None when it is not marked.
    A ScaledHead (prefopt.scoring.logps) is read by its attributes `head`, `multiply`, `softcap`."""
    multiply, softcap = 1.0, None
    if not isinstance(head, torch.nn.Linear) and hasattr(head, "multiply") and hasattr(head, "softcap"):
        multiply, softcap, head = float(head.multiply), head.softcap, head.head
    if not isinstance(head, torch.nn.Linear) or getattr(head, MARK, False) is not True:
        return None
    weight = head.weight
    if weight.ndim != 2 or weight.numel() == 0 or type(weight).__name__ == "DTensor" or hasattr(weight, "ds_id"):
        return None  # sharded (FSDP, ZeRO-3): the head's own forward gathers it; today's path
    return head, multiply, softcap


def compute_dtype(states: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's when it is on, else the weight's."""
    device = states.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def chunked_head_logps(head: torch.nn.Module, states: Tensor, targets: Tensor,
                       chunk_elements: int = CHUNK_ELEMENTS) -> Tensor | None:
    """log p(targets) (K,) float32 from hidden `states` (K, H) through a marked LM `head`, chunked; None
    when the head is not marked (the caller's own path then runs)."""
    parts = head_parts(head)
    if parts is None:
        return None
    linear, multiply, softcap = parts
    vocab, count = linear.weight.shape[0], max(states.shape[0], 1)
    spec = HeadSpec(rows=max(1, chunk_elements // vocab), cols=max(MIN_COLS, chunk_elements // count),
                    dtype=compute_dtype(states, linear.weight), multiply=multiply, softcap=softcap)
    return ChunkedHeadLogProb.apply(states, linear.weight, linear.bias, targets, spec)


def enable_chunked_head(model: torch.nn.Module, setting: bool | str = "auto") -> bool:
    """Mark (or unmark) `model`'s LM head for `chunked_head_logps` per `model.chunked_head`: true, false,
    or "auto" (on from a vocabulary of AUTO_MIN_VOCAB). Returns whether it is on."""
    if setting not in (True, False, "auto"):
        raise ConfigError(f"model.chunked_head={setting!r}: true, false or auto")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        if setting is True:
            raise ConfigError(f"model.chunked_head=true needs an nn.Linear LM head; this model's is "
                              f"{type(head).__name__}: set model.chunked_head=auto or false")
        return False
    on = setting is True or (setting == "auto" and head.out_features >= AUTO_MIN_VOCAB)
    setattr(head, MARK, on)
    return on
