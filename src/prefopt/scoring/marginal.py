"""The marginal rows: each response with no prompt, for the marginal pass a loss declares it needs.

A loss with `needs_marginal` (RMiPO and its shuffled control) declares `marginal_context`, what the
response is conditioned on:
- "start_token": start_ids + response, right-padded to the longest response; start_ids is the model's
  start token (BOS, else EOS) plus the text that stands for "no prompt" to the starting policy
  (`no_prompt_marker`), S tokens; the score mask is 1 exactly at the response tokens, so every response
  token is scored, the first included;
- "none" (the reference RMiPO code's), (2B, R): the response alone, its first token the context and the
  score mask 1 at the n-1 tokens after it (a one-token response scores none).
`MarginalRows` builds marginal_input_ids, marginal_attention_mask, marginal_score_mask (2B, ·) for the
collator (prefopt.data.collate.PairCollator), with their index plan `marginal_plan_*` (the padded rows'
`rows_plan`, prefopt.scoring.rows), so the live marginal pass and the table builds score with
`index_select`/`index_add` and no host synchronisation; a loss that needs no marginal gets none.
The "no prompt" marker is the scoring layer's: a data source whose own starting policy saw prompt-less
examples in a form of its own declares it as `no_prompt_marker` (the sort task: BOS '>' response EOS);
`no_prompt_marker(source)` reads it ("" for any other source). It is the marginal rows' key in the
log-prob cache (`start_ids`, prefopt.scoring.logp_cache.cache_key).
Exercised by `pytest tests/data/test_pair_collator.py tests/test_logp_cache.py tests/test_no_sync.py`.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from prefopt.contracts.layout import Width
from prefopt.scoring.logps import plan_keys
from prefopt.scoring.rows import pad_right, padded_length, rows_plan

MARGINAL_CONTEXTS = ("start_token", "none")


def no_prompt_marker(source: Any) -> str:
    """The text `source`'s starting policy saw in place of a prompt ("" unless the source declares one)."""
    return str(getattr(source, "no_prompt_marker", "") or "")


def marginal_scored(start: Sequence[int], n: int) -> list[int]:
    """The score mask of a marginal row start + response (n tokens): 0 at the start tokens, 1 at every
    response token; with no start token (marginal_context=none) the first response token is the context,
    0, and the n-1 after it are scored."""
    if start:
        return [0] * len(start) + [1] * n
    return [0] * min(n, 1) + [1] * max(n - 1, 0)


class MarginalRows:
    """Builds the marginal rows of a batch (see the module docstring). `start_ids`: the start token
    (+ marker) that "start_token" rows begin with; `self.start_ids` is what the rows do begin with ([]
    under "none")."""

    def __init__(self, start_ids: Sequence[int], context: str = "start_token") -> None:
        if context not in MARGINAL_CONTEXTS:
            raise ValueError(f"marginal_context={context!r}; one of {list(MARGINAL_CONTEXTS)}")
        self.context = context
        self.start_ids = [int(t) for t in start_ids] if context == "start_token" else []
        if context == "start_token" and not self.start_ids:
            raise ValueError("the marginal pass needs at least one start token")

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, start_id: int, context: str, marker: str = "") -> "MarginalRows":
        """The rows a loss's `marginal_context` asks for: `start_id` and the marker's tokens under
        "start_token" (the marker only follows a start token), the response alone under "none"."""
        with_marker = context == "start_token" and marker
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"] if with_marker else []
        return cls([start_id, *ids], context)

    def __call__(self, responses: Sequence[Sequence[int]], pad_id: int, width: Width = None) -> dict[str, Tensor]:
        """The marginal rows of `responses` and their plan; `width`: the padded length for the longest
        row's (prefopt.scoring.buckets; default the longest row's own)."""
        start = self.start_ids
        ids = [start + list(r) for r in responses]
        length = padded_length(ids, width)
        rows = {
            "marginal_input_ids": pad_right(ids, pad_id, length),
            "marginal_attention_mask": pad_right([[1] * (len(start) + len(r)) for r in responses], 0, length),
            "marginal_score_mask": pad_right([marginal_scored(start, len(r)) for r in responses], 0, length),
        }
        return {**rows, **plan_keys("marginal_", rows_plan(rows["marginal_input_ids"], rows["marginal_score_mask"]))}
