"""The one place that turns a causal LM's outputs into per-sequence log-probs.

`response_logps` runs the model body once, applies the LM head only at the positions that predict a
scored token (at a 32k vocabulary the head is the largest cost), and sums log-probs per row.
Used by the training module, the marginal pass, the evaluation's KL estimate and the samplers.
"""

from __future__ import annotations

import torch
from torch import Tensor


def model_body_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body (returning hidden states) and the LM head of a HF causal LM."""
    head = model.get_output_embeddings()
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None or head is None:
        body = getattr(model, model.base_model_prefix)
    return body, head


def token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] per row, computed in float32. logits (K, V), targets (K,)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def response_logps(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    score_mask: Tensor,
    chunk_size: int | None = None,
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
    if chunk_size is None or states.shape[0] <= chunk_size:
        per_token = token_logps(head(states), targets)
    else:
        per_token = torch.cat(
            [
                token_logps(head(states[i : i + chunk_size]), targets[i : i + chunk_size])
                for i in range(0, states.shape[0], chunk_size)
            ]
        )
    sums = torch.zeros(input_ids.shape[0], dtype=per_token.dtype, device=per_token.device)
    sums = sums.index_add(0, rows, per_token)
    return sums, target_mask.sum(dim=1)
