"""The prompt-once packed (tree) layout: each pair prompt + chosen + rejected as one unit, units end to end.

Its tensors (`tree_layout`, built when every prompt has at least one token): units packed into rows of
at most PACK_MAX_PADDING padding (prefopt.scoring.packed), so a prompt runs once, as in the shared-prompt
pass, and only the rows' tails are padding, as in the packed layout. The attention mask is built here,
one (C, C) block per row: a token sees the earlier tokens of its own pair that are on its branch (the
prompt, and its own response), never the other response of its pair, another pair or padding (a
padding token sees only itself, so no softmax row is empty). Position ids put both responses right
after the prompt. The mask goes to the model as a 4D mask (boolean for sdpa, additive for eager
attention: `model_mask`), which transformers passes to the attention unchanged; `tree_problem` checks
once per model, on a small pair batch, that the tree pass reproduces the padded rows' log-probs, and a
model it does not (flash attention, which takes no mask; a remote-code model with its own masks) scores
the packed or padded rows instead, with one warning. Sliding-window attention (Mistral) is left to the
packed layout when a branch is longer than the window, as the mask here does not place windows.
The collator's plan (`tree_plan`): tree_plan_* (a prefopt.scoring.logps.ScorePlan: the state predicting
each scored token, its target, padded row and order) and tree_max_position (a HostValue, for the window
check), so the pass reads nothing back from the device.
Exercised by `pytest tests/test_tree_logps.py tests/test_no_sync.py`.
"""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import torch
from torch import Tensor

from prefopt.contracts.layout import Ids, Layout, Width
from prefopt.scoring.logps import (DEFAULT_CHUNK_SIZE, HostValue, attention_window, batch_plan, head_logps,
                                   host_value, model_body_and_head, plan_keys, planned_logps, probe_pass,
                                   remembered_verdict, rows_gap_problem, score_plan)
from prefopt.scoring.packed import by_row, padded_rows
from prefopt.scoring.rows import ROWS

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
    plan = batch_plan(batch, "tree_")
    if plan is not None:  # the collator's (`tree_plan`): no host sync
        return planned_logps(head, hidden, plan, n_rows, chunk_size, per_token)
    scored = row >= 0
    width = ids.shape[1]
    offsets = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1) * width
    states = hidden.reshape(-1, hidden.shape[-1])[(source + offsets)[scored]]
    return by_row(head_logps(head, states, ids[scored], chunk_size), row[scored], n_rows, per_token)


# Verdicts of `tree_problem` per model object: the probe runs once per model.
_TREE_VERDICTS: "weakref.WeakKeyDictionary[torch.nn.Module, str | None]" = weakref.WeakKeyDictionary()

PROBE_PAIRS = ([[1, 2, 3], [1, 5]], [[4, 5], [3, 3, 2]], [[6, 7, 8, 9], [4]])  # prompts, chosen, rejected


@torch.no_grad()
def probe_tree(model: torch.nn.Module) -> str | None:
    """None when the tree pass reproduces the padded rows' per-token log-probs of `model` on two pairs
    of unequal lengths packed into one row (eval mode, no autocast), else what goes wrong."""
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if attention not in TREE_ATTENTION:
        return f"attention {attention!r} takes no custom mask (tree rows need {' or '.join(TREE_ATTENTION)})"
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in {**ROWS.tensors(*PROBE_PAIRS, 0), **TREE.tensors(*PROBE_PAIRS, 0)}.items()}
    got, problem = probe_pass(model, lambda: (tree_logps(model, batch, n_rows=4, per_token=True)[0],
                                              ROWS.logps(model, batch, per_token=True)[0]))
    return problem or rows_gap_problem(model, *got, f" (attention {attention})")


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
    if window is None:
        return True
    highest = host_value(batch, "tree_max_position")
    return (int(batch["tree_position_ids"].max()) if highest is None else highest) < window


def _tree_unit(prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int], pair: int, n_pairs: int):
    """One pair's tokens prompt, chosen, rejected, with per token: position (both responses continue
    the prompt's positions), pair, branch (0 prompt, 1 chosen, 2 rejected), the padded row it is scored
    in (-1: a prompt token) and the offset in the unit of the state that predicts it (-1: none)."""
    p, c, r = len(prompt), len(chosen), len(rejected)
    ids = list(prompt) + list(chosen) + list(rejected)
    positions = list(range(p + c)) + list(range(p, p + r))
    branch = [0] * p + [1] * c + [2] * r
    row = [-1] * p + [pair] * c + [n_pairs + pair] * r
    # a response's first token is predicted by the prompt's last state, every other by its own branch's previous one
    source = [-1] * p + [p - 1 + j for j in range(c)] + [p - 1 if j == 0 else p + c + j - 1 for j in range(r)]
    return ids, positions, branch, row, source


def tree_layout(prompts: Sequence[Sequence[int]], chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]],
                pad_id: int, capacity: int | None = None, width: Width = None) -> dict[str, Tensor]:
    """The B pairs packed into rows with each prompt once: a pair is the unit prompt + chosen + rejected
    (every prompt at least one token), units placed end to end by `first_fit` in rows of `capacity`
    tokens (default `row_length`: at most PACK_MAX_PADDING padding). Each (N, capacity): tree_input_ids;
    tree_position_ids (the rejected response restarts at the prompt's length, as if it followed the
    prompt alone); tree_pair (-1: padding) and tree_branch (0 prompt, 1 chosen, 2 rejected, -1
    padding), from which `tree_mask` builds the attention mask (a response sees its prompt and
    itself, never the other response or another pair); tree_row, the padded row (0..2B-1, chosen
    then rejected) a response token is scored in (-1 elsewhere); tree_source, the column of the state
    that predicts it (-1 elsewhere). Against the packed layout each prompt runs once; against the
    shared-prompt layout the two responses are not padded to one length. `width`: rows padded to
    width(capacity) (token buckets)."""
    units = [_tree_unit(p, c, r, i, len(prompts)) for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected))]
    rows, room = padded_rows([len(u[0]) for u in units], capacity, width)
    keys = ("input_ids", "position_ids", "pair", "branch", "row", "source")
    out: dict[str, list[list[int]]] = {k: [] for k in keys}
    for members, left in zip(rows, room):
        cols: dict[str, list[int]] = {k: [] for k in keys}
        for i in sorted(members):
            ids, positions, branch, row, source = units[i]
            start = len(cols["input_ids"])
            cols["source"] += [s + start if s >= 0 else -1 for s in source]
            cols["input_ids"] += ids
            cols["position_ids"] += positions
            cols["pair"] += [i] * len(ids)
            cols["branch"] += branch
            cols["row"] += row
        for key, fill in (("input_ids", pad_id), ("pair", -1), ("branch", -1), ("row", -1), ("source", -1)):
            cols[key] += [fill] * left
        cols["position_ids"] += list(range(left))
        for key in keys:
            out[key].append(cols[key])
    tree = {f"tree_{key}": torch.tensor(out[key], dtype=torch.long) for key in keys}
    return {**tree, **tree_plan(tree, 2 * len(prompts))}


def tree_plan(tree: dict[str, Tensor], n_rows: int) -> dict[str, Any]:
    """The `ScorePlan` of tree rows (CPU): each response token (tree_row >= 0), row-major, is predicted by
    the state at tree_source of its row; with the padded rows' order and the largest position id."""
    row, source = tree["tree_row"], tree["tree_source"]
    scored = row >= 0
    at = torch.stack([scored.nonzero()[:, 0], source[scored]], dim=1)
    plan = score_plan(at, tree["tree_input_ids"][scored], row[scored], n_rows, row.shape[1], ordered=True)
    highest = int(tree["tree_position_ids"].max()) if tree["tree_position_ids"].numel() else -1
    return {**plan_keys("tree_", plan), "tree_max_position": HostValue(highest)}


class TreeLayout(Layout):
    """Each prompt once, its two responses on their own branches, pairs end to end (module docstring)."""

    name = "tree"

    def tensors(self, prompts: Ids, chosen: Ids, rejected: Ids, pad_id: int, width: Width = None) -> dict[str, Any]:
        return tree_layout(prompts, chosen, rejected, pad_id, width=width) if all(len(p) for p in prompts) else {}

    def scores(self, batch: dict[str, Any], model: Any, share_prompt: bool | str = "auto") -> bool:
        return trees_batch(batch, model)

    def logps(self, model: Any, batch: dict[str, Any], per_token: bool = False) -> tuple[Tensor, Tensor]:
        return tree_logps(model, batch, n_rows=batch["input_ids"].shape[0], per_token=per_token)

    def token_counts(self, batch: dict[str, Any]) -> tuple[int, int]:
        return int(batch["tree_pair"].ge(0).sum()), batch["tree_input_ids"].numel()


TREE = TreeLayout()
