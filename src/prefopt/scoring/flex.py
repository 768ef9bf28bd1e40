"""Prompt-once attention without a dense mask: the shared prompt through FlexAttention and a block mask.

The prompt-once layouts (the shared-prompt rows, prefopt.scoring.shared, and the tree rows,
prefopt.scoring.tree) need a mask in which a response sees its prompt and itself but not the other
response of its pair. As a dense 4D mask it keeps sdpa off its flash kernel; here the same rule is a
FlexAttention `mask_mod` over three per-token tensors, pair (-1: padding), branch (0 prompt, 1 chosen,
2 rejected) and position, turned into a `BlockMask` by `create_block_mask`, so the kernel skips every
block no query of it may see (another pair, the other response, padding). The model runs with
`attn_implementation="flex_attention"`; transformers' mask builder (masking_utils) hands a 4D
`BlockMask` given as `attention_mask` to the attention unchanged. A sliding window (Mistral) is placed
by position, as in the padded rows.

The per-token tensors are derived here from what the collator already emits, with no host round trip:
from the tree rows (`tree_*`, when `data.pack` builds them; pairs end to end) or else from the
shared-prompt rows (one row per pair: prompt (P), chosen (R), rejected (R), positions of both responses
continuing the prompt's real length). `FLEX` is the layout `pair_batch_logps` tries first: it scores a
batch when the model runs flex attention (`model.attn_implementation: flex`) and `flex_problem` (probed
once per model against the padded rows) finds nothing wrong. On the CPU FlexAttention runs forward
only (torch 2.13 has no CPU backward) and compiles on first use (about 25 s for the tiny model); sdpa
stays the reference and the CPU path. Exercised by `pytest tests/test_flex_attention.py`.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
from torch import Tensor

from prefopt.contracts.layout import Ids, Layout, Width
from prefopt.scoring.logps import (DEFAULT_CHUNK_SIZE, attention_window, head_logps, model_body_and_head,
                                   probe_pass, remembered_verdict, rows_gap_problem, summed_logps)
from prefopt.scoring.packed import by_row
from prefopt.scoring.rows import ROWS
from prefopt.scoring.tree import PROBE_PAIRS

FLEX_ATTENTION = "flex_attention"  # transformers' name of the attention implementation
FLEX_BLOCK_SIZE = 128  # FlexAttention's default block (rows shorter than it get one block)


def uses_flex(model: Any) -> bool:
    """Whether `model` runs transformers' FlexAttention."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == FLEX_ATTENTION


def prompt_once_mask_mod(pair: Tensor, branch: Tensor, positions: Tensor, window: int | None = None) -> Callable:
    """The FlexAttention mask_mod of the prompt-once rows (pair, branch, positions: (N, C)): query q of
    row b may attend to key k when both belong to the same pair, k is on the prompt or on q's branch,
    and k is not later than q (by position) nor, with a `window`, `window` or more positions earlier.
    A padding query sees nothing (its output is never read; the kernel returns zeros for it)."""

    def mask_mod(b, h, q, k):
        same_pair = (pair[b, q] == pair[b, k]) & (pair[b, q] >= 0)
        visible = (branch[b, k] == 0) | (branch[b, k] == branch[b, q])
        earlier = positions[b, k] <= positions[b, q]
        allowed = same_pair & visible & earlier
        if window is not None:
            allowed = allowed & (positions[b, q] - positions[b, k] < window)
        return allowed

    return mask_mod


def prompt_once_block_mask(pair: Tensor, branch: Tensor, positions: Tensor, window: int | None = None,
                           block_size: int = FLEX_BLOCK_SIZE):
    """The `BlockMask` of `prompt_once_mask_mod` for rows (N, C), one mask for every head."""
    from torch.nn.attention.flex_attention import create_block_mask

    n, width = pair.shape
    mod = prompt_once_mask_mod(pair, branch, positions, window)
    return create_block_mask(mod, n, None, width, width, device=pair.device, BLOCK_SIZE=block_size)


def shared_rows(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The shared-prompt rows (B, P) + (2B, R) as one row per pair, (B, P + 2R): input_ids, pair (-1:
    padding), branch, position_ids (a response continues its prompt's real length), and `source`
    (2B, R): the column of the state that predicts each response token (the prompt's last real token
    for token 0). Tensor operations only: no host synchronisation."""
    prompts, prompt_mask = batch["prompt_ids"], batch["prompt_attention_mask"]
    responses, response_mask = batch["response_ids"], batch["response_attention_mask"]
    n, p = prompts.shape
    r = responses.shape[1]
    chosen, rejected = responses[:n], responses[n:]
    real = torch.cat([prompt_mask, response_mask[:n], response_mask[n:]], dim=1).bool()
    pairs = torch.arange(n, device=prompts.device).unsqueeze(1)
    lengths = prompt_mask.sum(dim=1, keepdim=True)
    steps = torch.arange(r, device=prompts.device)
    branch = torch.cat([torch.zeros_like(prompts), torch.ones_like(chosen), torch.full_like(rejected, 2)], dim=1)
    positions = torch.cat([torch.arange(p, device=prompts.device).expand(n, p), lengths + steps, lengths + steps], dim=1)
    # token j of a response is predicted by the state before it: the prompt's last (j = 0), else j - 1 of its branch
    starts = torch.tensor([p, p + r], device=prompts.device).repeat_interleave(n).unsqueeze(1)
    source = torch.where(steps == 0, lengths.repeat(2, 1) - 1, starts + steps - 1)
    return {"input_ids": torch.cat([prompts, chosen, rejected], dim=1), "pair": torch.where(real, pairs, -1),
            "branch": branch, "position_ids": positions, "source": source}


def flex_hidden(model: torch.nn.Module, ids: Tensor, pair: Tensor, branch: Tensor, positions: Tensor) -> Tensor:
    """The body's last hidden states (N, C, H) of the prompt-once rows, attention through the block mask."""
    body, _ = model_body_and_head(model)
    mask = prompt_once_block_mask(pair, branch, positions, attention_window(model))
    return body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state


def flex_shared_logps(model: torch.nn.Module, batch: dict[str, Tensor], chunk_size: int | None = DEFAULT_CHUNK_SIZE,
                      per_token: bool = False) -> tuple[Tensor, Tensor]:
    """`shared_prompt_logps` of the batch's shared-prompt rows in one pass (`shared_rows`, block mask):
    (logps (2B,), n_tokens (2B,)), or with `per_token` (logps (K,), rows (K,)), in the same order."""
    rows = shared_rows(batch)
    hidden = flex_hidden(model, rows["input_ids"], rows["pair"], rows["branch"], rows["position_ids"])
    n = hidden.shape[0]
    owner = torch.arange(n, device=hidden.device).repeat(2).unsqueeze(1)  # the pair row each response lives in
    states = hidden[owner, rows["source"]]  # (2B, R, H)
    _, head = model_body_and_head(model)
    response_mask = batch["response_attention_mask"].bool()
    return summed_logps(head, states, batch["response_ids"], response_mask, chunk_size, per_token)


def flex_tree_logps(model: torch.nn.Module, batch: dict[str, Tensor], n_rows: int,
                    chunk_size: int | None = DEFAULT_CHUNK_SIZE, per_token: bool = False) -> tuple[Tensor, Tensor]:
    """`tree_logps` of the batch's tree rows with the block mask instead of the dense one."""
    ids, row, source = batch["tree_input_ids"], batch["tree_row"], batch["tree_source"]
    hidden = flex_hidden(model, ids, batch["tree_pair"], batch["tree_branch"], batch["tree_position_ids"])
    scored = row >= 0
    offsets = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1) * ids.shape[1]
    states = hidden.reshape(-1, hidden.shape[-1])[(source + offsets)[scored]]
    _, head = model_body_and_head(model)
    return by_row(head_logps(head, states, ids[scored], chunk_size), row[scored], n_rows, per_token)


# Verdicts of `flex_problem` per model object: the probe runs once per model.
_FLEX_VERDICTS: "weakref.WeakKeyDictionary[torch.nn.Module, str | None]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def probe_flex(model: torch.nn.Module) -> str | None:
    """None when the flex pass reproduces `model`'s padded-row per-token log-probs (run on sdpa, the same
    weights) on two pairs of unequal lengths (eval mode, no autocast), else what goes wrong (layers with different windows,
    which one block mask cannot serve; an error; a mismatch)."""
    config = getattr(model, "config", None)
    types = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config, "layer_types", None)
    if types is not None and len(set(types)) > 1:
        return f"its layers attend differently ({sorted(set(types))}); one block mask serves one kind"
    from prefopt.scoring.shared import SHARED

    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in {**ROWS.tensors(*PROBE_PAIRS, 0), **SHARED.tensors(*PROBE_PAIRS, 0)}.items()}

    def flex_then_rows() -> tuple[Tensor, Tensor]:
        flex, _ = flex_shared_logps(model, batch, per_token=True)
        model.set_attn_implementation("sdpa")  # the reference: the padded rows on sdpa
        return flex, ROWS.logps(model, batch, per_token=True)[0]

    try:
        got, problem = probe_pass(model, flex_then_rows)
    finally:
        model.set_attn_implementation(FLEX_ATTENTION)
    return problem or rows_gap_problem(model, *got)


def flex_problem(model: torch.nn.Module) -> str | None:
    """Why `model` cannot score the prompt-once rows through flex attention (None: it can), probed once."""
    return remembered_verdict(_FLEX_VERDICTS, model, probe_flex, "prompt-once rows through flex attention",
                              "scoring the next layout instead")


class FlexLayout(Layout):
    """The prompt-once rows (tree rows when built, else the shared-prompt rows) through FlexAttention with
    a block mask. Builds no tensors of its own: it reads the other layouts' (module docstring)."""

    name = "flex"

    def tensors(self, prompts: Ids, chosen: Ids, rejected: Ids, pad_id: int, width: Width = None) -> dict[str, Any]:
        return {}

    def scores(self, batch: dict[str, Any], model: Any, share_prompt: bool | str = "auto") -> bool:
        carries = "tree_input_ids" in batch or ("prompt_ids" in batch and share_prompt is not False)
        return carries and uses_flex(model) and flex_problem(model) is None

    def logps(self, model: Any, batch: dict[str, Any], per_token: bool = False) -> tuple[Tensor, Tensor]:
        if "tree_input_ids" in batch:
            return flex_tree_logps(model, batch, n_rows=batch["input_ids"].shape[0], per_token=per_token)
        return flex_shared_logps(model, batch, per_token=per_token)

    def token_counts(self, batch: dict[str, Any]) -> tuple[int, int]:
        if "tree_input_ids" in batch:
            return int(batch["tree_pair"].ge(0).sum()), batch["tree_input_ids"].numel()
        real = int(batch["prompt_attention_mask"].sum() + batch["response_attention_mask"].sum())
        return real, batch["prompt_ids"].numel() + batch["response_ids"].numel()


FLEX = FlexLayout()
