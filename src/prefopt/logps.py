"""The one place that turns a causal LM's outputs into per-sequence log-probs.

`response_logps` runs the model body once, applies the LM head only at the positions that predict a
scored token (at a 32k vocabulary the head is the largest cost), and sums log-probs per row.
`token_logps` is log softmax(logits)[target] computed in float32 without a float32 copy of the whole
(K, V) logits: `TokenLogProb` upcasts `chunk_size` rows at a time and saves the logits in their own
dtype for the backward (bf16 logits stay bf16). Without gradients the LM head itself runs in chunks
of `chunk_size` positions, so a reference or marginal pass never holds more than one chunk of logits.
Measurements behind these choices: `python benchmarks/logps_micro.py`.
Used by the training module, the marginal pass, the log-prob caches, the evaluation and the samplers.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rows of logits upcast to float32 at a time (and positions per LM-head call without gradients).
# 1024 x 32k vocabulary = 128 MiB of float32 per chunk; see benchmarks/logps_micro.py.
DEFAULT_CHUNK_SIZE = 1024


def model_body_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body (returning hidden states) and the LM head of a HF causal LM."""
    head = model.get_output_embeddings()
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None or head is None:
        body = getattr(model, model.base_model_prefix)
    return body, head


class TokenLogProb(torch.autograd.Function):
    """log softmax(logits)[target] in float32, `chunk` rows at a time; saves logits in their dtype.

    Forward: lse = logsumexp(float(logits)), out = float(logits)[target] - lse, per chunk of rows.
    Backward: d out_k / d logits_k = onehot(target_k) - softmax(logits_k), rebuilt per chunk from the
    saved logits and lse, so no (K, V) float32 tensor outlives one chunk.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, chunk: int) -> Tensor:  # type: ignore[override]
        n = logits.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
        for i in range(0, n, chunk):
            lse[i : i + chunk] = torch.logsumexp(logits[i : i + chunk].float(), dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk = chunk
        return picked - lse

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        logits, targets, lse = ctx.saved_tensors
        chunk = ctx.chunk
        grad = torch.empty_like(logits)
        for i in range(0, logits.shape[0], chunk):
            g = grad_out[i : i + chunk].unsqueeze(-1).float()
            part = (logits[i : i + chunk].float() - lse[i : i + chunk].unsqueeze(-1)).exp_().mul_(-g)
            part.scatter_add_(-1, targets[i : i + chunk].unsqueeze(-1), g)
            grad[i : i + chunk] = part
        return grad, None, None


def token_logps(logits: Tensor, targets: Tensor, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> Tensor:
    """log softmax(logits)[target] per row, in float32. logits (K, V), targets (K,)."""
    chunk = max(1, chunk_size or logits.shape[0] or 1)
    if not (torch.is_grad_enabled() and logits.requires_grad):
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for i in range(0, logits.shape[0], chunk):
            rows = logits[i : i + chunk].float()
            out[i : i + chunk] = rows.gather(-1, targets[i : i + chunk].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(
                rows, dim=-1
            )
        return out
    return TokenLogProb.apply(logits, targets, chunk)


def head_logps(
    head: torch.nn.Module, states: Tensor, targets: Tensor, chunk_size: int | None = DEFAULT_CHUNK_SIZE
) -> Tensor:
    """Per-position log-probs of `targets` from hidden `states` (K, H) through the LM `head`.

    With gradients the head runs once over all K positions (its backward needs the full logits anyway);
    without, it runs `chunk_size` positions at a time, so peak memory is one chunk of logits.
    """
    if torch.is_grad_enabled() and states.requires_grad:
        return token_logps(head(states), targets, chunk_size)
    chunk = max(1, chunk_size or states.shape[0] or 1)
    parts = [
        token_logps(head(states[i : i + chunk]), targets[i : i + chunk], None)
        for i in range(0, states.shape[0], chunk)
    ]
    return torch.cat(parts) if parts else states.new_zeros(0, dtype=torch.float32)


def response_logps(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    score_mask: Tensor,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """Summed log π(token) over the tokens marked in `score_mask`, and how many were scored.

    input_ids, attention_mask, score_mask: (N, L). `score_mask[i, t] = 1` when token t of row i is
    scored (it is predicted from the hidden state at t-1, so column 0 is never scored).
    Returns (logps (N,), n_tokens (N,)), logps in float32.
    """
    body, head = model_body_and_head(model)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    target_mask = score_mask[:, 1:].bool()
    rows = target_mask.nonzero(as_tuple=True)[0]
    states = hidden[:, :-1][target_mask]  # (K, H): only positions that predict a scored token
    targets = input_ids[:, 1:][target_mask]  # (K,)
    per_token = head_logps(head, states, targets, chunk_size)
    sums = torch.zeros(input_ids.shape[0], dtype=per_token.dtype, device=per_token.device)
    sums = sums.index_add(0, rows, per_token)
    return sums, target_mask.sum(dim=1)
