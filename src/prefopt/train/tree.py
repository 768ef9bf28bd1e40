"""Scoring a pair batch on its prompt-once packed rows (the collator's tree layout, `data.pack`).

Each pair is one unit, prompt + chosen + rejected, and units are packed end to end into rows
(prefopt.data.collate.tree_layout): every prompt runs through the transformer once, as in the
shared-prompt pass, and only the rows' tails are padding, as in the packed layout. The attention mask
is built here, one (C, C) block per row: a token sees the earlier tokens of its own pair that are on
its branch (the prompt, and its own response), never the other response of its pair, another pair or
padding (a padding token sees only itself, so no softmax row is empty). Position ids put both
responses right after the prompt. The mask goes to the model as a 4D mask (boolean for sdpa,
additive for eager attention: `model_mask`), which transformers passes to the attention unchanged; `tree_problem` checks once per model, on a small pair batch, that the tree pass
reproduces the padded rows' log-probs, and a model it does not (flash attention, which takes no
mask; a remote-code model with its own masks) scores the packed or padded rows instead, with one
warning. Sliding-window attention (Mistral) is left to the packed layout when a branch is longer
than the window, as the mask here does not place windows.
Exercised by `pytest tests/test_tree_logps.py`.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from prefopt.train.logps import (DEFAULT_CHUNK_SIZE, attention_window, by_row, check_tolerance, head_logps,
                                 model_body_and_head, remembered_verdict, response_logps)

TREE_ATTENTION = ("sdpa", "eager")  # attention implementations that take a custom 4D mask as it is


def tree_mask(pair: Tensor, branch: Tensor, positions: Tensor) -> Tensor:
    """(N, 1, C, C) boolean mask of the tree layout: True where query token q may attend to key token k
    (same pair, k not later than q, k on the prompt or on q's own branch; a padding token to itself)."""
    same_pair = (pair[:, :, None] == pair[:, None, :]) & (pair[:, :, None] >= 0)
    earlier = positions[:, None, :] <= positions[:, :, None]
    visible = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
    allowed = same_pair & earlier & visible
    allowed |= torch.eye(pair.shape[1], dtype=torch.bool, device=pair.device)
    return allowed.unsqueeze(1)


def model_mask(allowed: Tensor, model: torch.nn.Module) -> Tensor:
    """The mask as `model`'s attention takes it: boolean for sdpa (any compute dtype, autocast
    included), additive for eager attention (0 where allowed, the weights' dtype minimum elsewhere)."""
    if getattr(getattr(model, "config", None), "_attn_implementation", None) != "eager":
        return allowed
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def tree_logps(model: torch.nn.Module, batch: dict[str, Tensor], n_rows: int,
               chunk_size: int | None = DEFAULT_CHUNK_SIZE, per_token: bool = False) -> tuple[Tensor, Tensor]:
    """`response_logps` of the batch's `n_rows` (2B) prompt+response rows, from its tree layout.
    Returns (logps (n_rows,), n_tokens (n_rows,)), or with `per_token` (logps (K,), rows (K,)) in the
    order of the padded rows (by row, then position)."""
    body, head = model_body_and_head(model)
    ids, row, source = batch["tree_input_ids"], batch["tree_row"], batch["tree_source"]
    mask = model_mask(tree_mask(batch["tree_pair"], batch["tree_branch"], batch["tree_position_ids"]), model)
    hidden = body(input_ids=ids, attention_mask=mask, position_ids=batch["tree_position_ids"],
                  use_cache=False).last_hidden_state
    scored = row >= 0
    width = ids.shape[1]
    offsets = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1) * width
    states = hidden.reshape(-1, hidden.shape[-1])[(source + offsets)[scored]]
    return by_row(head_logps(head, states, ids[scored], chunk_size), row[scored], n_rows, per_token)


# Verdicts of `tree_problem` per model object: the probe runs once per model.
_TREE_VERDICTS: "weakref.WeakKeyDictionary[torch.nn.Module, str | None]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def probe_tree(model: torch.nn.Module) -> str | None:
    """None when the tree pass reproduces the padded rows' per-token log-probs of `model` on two pairs
    of unequal lengths packed into one row (eval mode, no autocast), else what goes wrong."""
    from prefopt.data.collate import PairCollator

    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if attention not in TREE_ATTENTION:
        return f"attention {attention!r} takes no custom mask (tree rows need {' or '.join(TREE_ATTENTION)})"
    items = [{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6, 7, 8, 9], "index": 0},
             {"prompt_ids": [1, 5], "chosen_ids": [3, 3, 2], "rejected_ids": [4], "index": 1}]
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in PairCollator(pad_id=0, start_ids=[1], pack=True)(items).items()}
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, enabled=False):
            tree, _ = tree_logps(model, batch, n_rows=4, per_token=True)
            rows, _ = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["score_mask"],
                                     per_token=True)
    except Exception as err:  # noqa: BLE001 - any failure means: no tree rows for this model
        return f"{type(err).__name__}: {err}"
    finally:
        model.train(was_training)
    gap = float((tree - rows).abs().max())
    if gap > check_tolerance(model) * (1 + float(rows.abs().max())):
        return f"per-token log-probs differ from the padded rows by up to {gap:.3g} (attention {attention})"
    return None


def tree_problem(model: torch.nn.Module) -> str | None:
    """Why `model` cannot score the tree layout (None: it can), probed once per model (`probe_tree`)."""
    return remembered_verdict(_TREE_VERDICTS, model, probe_tree, "prompt-once packed rows",
                              "packing each sequence apart instead")


def trees_batch(batch: dict[str, Tensor], model: torch.nn.Module) -> bool:
    """Whether `batch` is scored on its tree rows: it carries them, `model` scores them, and no branch
    is longer than `model`'s sliding attention window (the mask places no window)."""
    if "tree_input_ids" not in batch or tree_problem(model) is not None:
        return False
    window = attention_window(model)
    return window is None or int(batch["tree_position_ids"].max()) < window
