"""The shared-prompt layout: each prompt once (B, P), the responses apart (2B, R).

`shared_prompt_logps` scores a pair batch with each prompt run once: the prompt's keys and values are
reused by its chosen and its rejected response (equal to `response_logps` on the concatenated rows; the
transformer skips a third of its work at equal prompt and response lengths). Its tensors:
prompt_ids, prompt_attention_mask (B, P) and response_ids, response_attention_mask (2B, R), right-padded,
left out when a prompt is empty. Whether a pass shares (`shares_batch_prompt`: the run's `share_prompt`,
the batch's prompt length, the model's attention window) is asked per batch; an "auto" setting is settled
once per model by prefopt.scoring.sharing. The collator's plan (`shared_plan`): response_plan_* (a
prefopt.scoring.logps.ScorePlan over the (2B, R) response states), prompt_lengths (B,) and shared_padded
(a HostValue: (prompts padded, responses padded)), so the pass reads nothing back from the device.
Exercised by `pytest tests/test_logps.py tests/test_no_sync.py`.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from prefopt.contracts.layout import Ids, Layout, Width
from prefopt.scoring.logps import (DEFAULT_CHUNK_SIZE, HostValue, ScorePlan, attention_window, batch_plan,
                                   host_value, model_body_and_head, plan_keys, planned_logps, score_plan,
                                   summed_logps)
from prefopt.scoring.rows import pad_right, padded_length


def shared_prompt_logps(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    per_token: bool = False,
    plan: ScorePlan | None = None,
    lengths: Tensor | None = None,
    padded: tuple[bool, bool] = (True, True),
) -> tuple[Tensor, Tensor]:
    """`response_logps` of the rows prompt_i + response_r (r = i and i + B), running each prompt once.

    prompt_ids, prompt_mask: (B, P) right-padded, every prompt at least one token; response_ids,
    response_mask: (2B, R) right-padded, rows [chosen of pairs 0..B-1; rejected of pairs 0..B-1].
    The prompt pass's keys and values (differentiable) are repeated for both responses; the response
    pass attends to them through the attention mask [prompt mask, response mask] at positions
    prompt length + j. Returns (logps (2B,), n_tokens (2B,)), logps in float32. From the collator:
    `plan` (`ScorePlan` over the (2B, R) states), `lengths` (B,) the prompts' lengths, `padded` whether
    prompts / responses have padding (no mask where neither does: the same numbers, nothing read back).
    """
    from transformers import DynamicCache

    body, head = model_body_and_head(model)
    out = body(input_ids=prompt_ids, attention_mask=prompt_mask if padded[0] else None, use_cache=True)
    cache_arg = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
    layers = [(layer.keys, layer.values) for layer in getattr(out, cache_arg).layers]
    cache = DynamicCache(ddp_cache_data=[(torch.cat([k, k]), torch.cat([v, v])) for k, v in layers])
    lengths = prompt_mask.sum(dim=1) if lengths is None else lengths
    last = out.last_hidden_state[torch.arange(prompt_ids.shape[0], device=prompt_ids.device), lengths - 1]
    width = response_ids.shape[1]
    positions = lengths.repeat(2).unsqueeze(1) + torch.arange(width, device=response_ids.device)
    hidden = body(
        input_ids=response_ids,
        attention_mask=torch.cat([prompt_mask.repeat(2, 1), response_mask], dim=1) if any(padded) else None,
        position_ids=positions,
        use_cache=True,
        **{cache_arg: cache},
    ).last_hidden_state
    # token j of a response is predicted by the state before it: the prompt's last (j = 0), else j - 1
    states = torch.cat([last.repeat(2, 1).unsqueeze(1), hidden[:, :-1]], dim=1)
    if plan is not None:
        return planned_logps(head, states, plan, response_ids.shape[0], chunk_size, per_token)
    return summed_logps(head, states, response_ids, response_mask.bool(), chunk_size, per_token)


# "auto" shares a batch's prompts from this padded prompt length on: below it a second, short pass
# costs more than it saves (2-layer d=64 model on one CPU thread, `python benchmarks/shared_prompt.py`:
# 1.05-1.08x the training pass time at 6 prompt tokens, 0.78-0.96x at 16-64).
SHARE_MIN_PROMPT_TOKENS = 16


def shares_batch_prompt(batch: dict[str, Tensor], share_prompt: bool | str = "auto",
                        model: torch.nn.Module | None = None) -> bool:
    """Whether `pair_batch_logps` runs this batch's prompts once: `share_prompt` true, or "auto" and
    prompts padded to at least SHARE_MIN_PROMPT_TOKENS; never without the shared layout, nor when the
    padded prompt + response is longer than `model`'s sliding attention window (the response pass would
    place the window by padded positions)."""
    if "prompt_ids" not in batch or share_prompt is False:
        return False
    window = attention_window(model) if model is not None else None
    if window is not None and batch["prompt_ids"].shape[1] + batch["response_ids"].shape[1] > window:
        return False
    return share_prompt is True or batch["prompt_ids"].shape[1] >= SHARE_MIN_PROMPT_TOKENS


def shared_plan(prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor) -> dict[str, Any]:
    """The collator's plan of the shared-prompt tensors (CPU): token j of response r is predicted by
    state (r, j) of the (2B, R) states `shared_prompt_logps` lines up; the prompts' lengths; padding."""
    at = response_mask.bool().nonzero()
    plan = score_plan(at, response_ids[response_mask.bool()], at[:, 0], *response_ids.shape)
    padded = (not bool(prompt_mask.all()), not bool(response_mask.all()))
    return {**plan_keys("response_", plan), "prompt_lengths": prompt_mask.sum(dim=1),
            "shared_padded": HostValue(padded)}


class SharedPromptLayout(Layout):
    """Each prompt once, its two responses after it (see the module docstring)."""

    name = "shared"

    def tensors(self, prompts: Ids, chosen: Ids, rejected: Ids, pad_id: int, width: Width = None) -> dict[str, Any]:
        if not all(len(p) for p in prompts):
            return {}
        responses = [*chosen, *rejected]
        p, r = padded_length(prompts, width), padded_length(responses, width)
        out = {
            "prompt_ids": pad_right(prompts, pad_id, p),
            "prompt_attention_mask": pad_right([[1] * len(x) for x in prompts], 0, p),
            "response_ids": pad_right(responses, pad_id, r),
            "response_attention_mask": pad_right([[1] * len(x) for x in responses], 0, r),
        }
        return {**out, **shared_plan(out["prompt_attention_mask"], out["response_ids"], out["response_attention_mask"])}

    def scores(self, batch: dict[str, Any], model: Any, share_prompt: bool | str = "auto") -> bool:
        return shares_batch_prompt(batch, share_prompt, model)

    def logps(self, model: Any, batch: dict[str, Any], per_token: bool = False) -> tuple[Tensor, Tensor]:
        return shared_prompt_logps(model, batch["prompt_ids"], batch["prompt_attention_mask"], batch["response_ids"],
                                   batch["response_attention_mask"], per_token=per_token,
                                   plan=batch_plan(batch, "response_"), lengths=batch.get("prompt_lengths"),
                                   padded=host_value(batch, "shared_padded", (True, True)))

    def token_counts(self, batch: dict[str, Any]) -> tuple[int, int]:
        real = int(batch["prompt_attention_mask"].sum() + batch["response_attention_mask"].sum())
        return real, batch["prompt_ids"].numel() + batch["response_ids"].numel()


SHARED = SharedPromptLayout()
