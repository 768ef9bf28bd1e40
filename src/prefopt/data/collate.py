"""Batching tokenized pairs into the tensors the module scores: only those the run's layouts and loss need.

For B pairs, rows 0..B-1 are prompt+chosen and rows B..2B-1 prompt+rejected. A batch carries:
- index (B,): each pair's index in its dataset (keys for cached reference/marginal log-probs);
- the tensors of each layout the run's `LayoutChoice` names (prefopt.scoring.layout.choose_layout, chosen
  once per run): the padded rows always (prefopt.scoring.rows), the shared-prompt rows unless
  `share_prompt` is false (prefopt.scoring.shared; left out when a prompt is empty), and with
  `data.pack` the packed and prompt-once packed rows (prefopt.scoring.packed, prefopt.scoring.tree);
  with token buckets (`LayoutChoice.buckets`, `data.token_buckets`) every token dimension, the marginal
  rows' included, padded up to its bucket (prefopt.scoring.buckets);
- the marginal rows (prefopt.scoring.marginal.MarginalRows) only when the loss needs a marginal pass
  (`needs_marginal`): a DPO, IPO or SimPO batch has none;
- each layout's index plan, computed here on the CPU by the layout's `tensors` (prefopt.scoring.logps
  .ScorePlan: `plan_*`, `response_plan_*`, `packed_plan_*`, `tree_plan_*`: flat indices of the states
  that predict the scored tokens, their targets, padded rows, per-row counts and order) and host facts
  (`HostValue`s: `shared_padded`, `tree_max_position`), so the training step indexes with them and
  reads nothing back from the device (no boolean masks, `nonzero`, `bincount` or `.item()` there).
Exercised by `pytest tests/data/test_pair_collator.py tests/test_packed_logps.py tests/test_tree_logps.py
tests/test_no_sync.py tests/test_token_buckets.py`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prefopt.scoring.layout import LayoutChoice
from prefopt.scoring.marginal import MarginalRows


class PairCollator:
    """Callable collate_fn: list of {prompt_ids, chosen_ids, rejected_ids, index} -> batch dict.
    `layout`: the run's layouts (default: padded and shared-prompt rows); `marginal`: the marginal rows
    the loss asks for (None: the loss needs no marginal pass)."""

    def __init__(self, pad_id: int, layout: LayoutChoice | None = None, marginal: MarginalRows | None = None):
        self.pad_id = int(pad_id)
        self.layout = layout or LayoutChoice()
        self.marginal = marginal

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [it["prompt_ids"] for it in items]
        chosen = [it["chosen_ids"] for it in items]
        rejected = [it["rejected_ids"] for it in items]
        batch: dict[str, Any] = {}
        width = self.layout.buckets
        for layout in self.layout.layouts:
            batch.update(layout.tensors(prompts, chosen, rejected, self.pad_id, width=width))
        if self.marginal is not None:
            batch.update(self.marginal([*chosen, *rejected], self.pad_id, width))
        batch["index"] = torch.tensor([int(it["index"]) for it in items], dtype=torch.long)
        return batch
