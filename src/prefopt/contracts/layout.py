"""The layout contract (no prefopt imports): how a pair batch is laid out for the transformer and scored.

A `Layout` builds its own batch tensors from the tokenized pairs (`tensors`, called by the collator,
prefopt.data.collate.PairCollator), says whether a model scores a batch on it (`scores`) and scores it
(`logps`). The layouts (padded rows, shared prompt, packed, prompt-once packed "tree") live in
prefopt.scoring; which of them a run builds is chosen once, by prefopt.scoring.layout.choose_layout, and
kept in the run plan (`RunPlan.layout`). Exercised by `pytest tests/test_contracts.py tests/test_layers.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Optional, Sequence

Ids = Sequence[Sequence[int]]
Width = Optional[Callable[[int], int]]  # a token dimension's padded width from its longest row's length (None: that length)


class Layout(ABC):
    """One way to lay out B pairs (rows 0..B-1 prompt+chosen, B..2B-1 prompt+rejected) and score them."""

    name: str = "layout"

    @abstractmethod
    def tensors(self, prompts: Ids, chosen: Ids, rejected: Ids, pad_id: int, width: Width = None) -> dict[str, Any]:
        """This layout's tensors of the B pairs ({} when it cannot lay them out, e.g. an empty prompt);
        `width`: each token dimension padded to width(its longest row) (`data.token_buckets`)."""

    @abstractmethod
    def scores(self, batch: dict[str, Any], model: Any, share_prompt: bool | str = "auto") -> bool:
        """Whether `model` scores `batch` on this layout (the batch carries it and the model fits it)."""

    @abstractmethod
    def logps(self, model: Any, batch: dict[str, Any], per_token: bool = False) -> tuple[Any, Any]:
        """(logps (2B,), n_tokens (2B,)) of the batch's responses; with `per_token` the scored tokens'
        log-probs unsummed and the row of each, (logps (K,), rows (K,)), in the padded rows' order."""

    @abstractmethod
    def token_counts(self, batch: dict[str, Any]) -> tuple[int, int]:
        """(real, processed) tokens this layout runs through the transformer for `batch`."""
