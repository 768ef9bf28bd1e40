"""The padded-rows layout: every pair's prompt+chosen and prompt+rejected as right-padded rows.

For B pairs, rows 0..B-1 are prompt+chosen and rows B..2B-1 prompt+rejected: input_ids, attention_mask,
score_mask (2B, L), score_mask 1 exactly at the response tokens. Every batch carries these rows: they are
the layout any model scores (`response_logps`), the one the other layouts fall back to, and what the
checks of the other layouts compare against. With them the collator's plan (`rows_plan`): plan_index,
plan_target, plan_row, plan_count (prefopt.scoring.logps.ScorePlan). The rows keep their attention mask
even without padding: given none and no cache, transformers reads the position ids back to look for
packed sequences, one sync either way. Exercised by `pytest tests/data/test_pair_collator.py tests/test_no_sync.py`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from prefopt.contracts.layout import Ids, Layout, Width
from prefopt.scoring.logps import batch_plan, plan_keys, response_logps, score_plan


def pad_right(seqs: Sequence[Sequence[int]], pad_value: int, length: int | None = None) -> Tensor:
    """(N, length) long tensor of the sequences, right-padded with `pad_value` (length: the longest)."""
    length = max((len(s) for s in seqs), default=0) if length is None else length
    if not seqs:
        return torch.full((0, length), pad_value, dtype=torch.long)
    # one tensor from padded Python lists: ~5x faster than filling row by row (a tensor per row)
    return torch.tensor([list(s) + [pad_value] * (length - len(s)) for s in seqs], dtype=torch.long)


def padded_length(seqs: Sequence[Sequence[int]], width: Width = None) -> int:
    """The length `seqs` are padded to: the longest's, or `width` of it (token buckets, prefopt.scoring.buckets)."""
    longest = max((len(s) for s in seqs), default=0)
    return width(longest) if width is not None else longest


def rows_plan(input_ids: Tensor, score_mask: Tensor) -> dict[str, Tensor]:
    """The `ScorePlan` of right-padded rows (CPU tensors, N x L): token t of row r, where score_mask is
    1 (t >= 1), is predicted by the state at (r, t - 1); row-major, the order a boolean mask gives."""
    at = score_mask[:, 1:].bool().nonzero()  # (K, 2): row, column of the predicting state
    targets = input_ids[:, 1:][score_mask[:, 1:].bool()]
    return score_plan(at, targets, at[:, 0], input_ids.shape[0], input_ids.shape[1])


class RowsLayout(Layout):
    """Full prompt+response rows, right-padded (see the module docstring)."""

    name = "rows"

    def tensors(self, prompts: Ids, chosen: Ids, rejected: Ids, pad_id: int, width: Width = None) -> dict[str, Any]:
        both = [*prompts, *prompts]
        responses = [*chosen, *rejected]
        full = [list(p) + list(r) for p, r in zip(both, responses)]
        length = padded_length(full, width)
        rows = {
            "input_ids": pad_right(full, pad_id, length),
            "attention_mask": pad_right([[1] * len(s) for s in full], 0, length),
            "score_mask": pad_right([[0] * len(p) + [1] * len(r) for p, r in zip(both, responses)], 0, length),
        }
        return {**rows, **plan_keys("", rows_plan(rows["input_ids"], rows["score_mask"]))}

    def scores(self, batch: dict[str, Any], model: Any, share_prompt: bool | str = "auto") -> bool:
        return True  # every model, every batch

    def logps(self, model: Any, batch: dict[str, Any], per_token: bool = False) -> tuple[Tensor, Tensor]:
        return response_logps(model, batch["input_ids"], batch["attention_mask"], batch["score_mask"],
                              per_token=per_token, plan=batch_plan(batch, ""))

    def token_counts(self, batch: dict[str, Any]) -> tuple[int, int]:
        return int(batch["attention_mask"].sum()), batch["input_ids"].numel()


ROWS = RowsLayout()
