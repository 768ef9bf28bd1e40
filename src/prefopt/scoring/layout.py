"""Which layouts a run lays its pair batches out in, chosen once, and scoring a batch on the first that fits.

`choose_layout(data_pack, share_prompt, trainer, buckets)` is the one function that reads the run's layout
settings (`data.pack`: true | false | auto, `share_prompt`: true | false | auto, and the token buckets of
`data.token_buckets`, prefopt.scoring.buckets) and returns a frozen `LayoutChoice`, kept in the run plan
(`RunPlan.layout`). The choice names the layouts the collator builds
(`LayoutChoice.layouts`, in the order they are tried): with packing the prompt-once packed rows (tree)
and the packed rows, then the shared-prompt rows unless `share_prompt` is false, then the padded rows
every batch carries. `pair_batch_logps` scores a batch on the first of `LAYOUTS` that the batch carries
and the model fits (`batch_layout`: a model that cannot pack or take the tree mask, a prompt too short
to share, a sliding window: the next one), with the same numbers every way.
Exercised by `pytest tests/test_logps.py tests/test_packed_logps.py tests/test_tree_logps.py
tests/test_gpu_configs.py tests/test_token_buckets.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefopt.contracts.layout import Layout
from prefopt.log import get_logger
from prefopt.scoring.buckets import TokenBuckets
from prefopt.scoring.flex import FLEX
from prefopt.scoring.packed import PACKED
from prefopt.scoring.rows import ROWS
from prefopt.scoring.shared import SHARED
from prefopt.scoring.tree import TREE

log = get_logger()
# the order a batch's layouts are tried in; FLEX (prefopt.scoring.flex) builds no tensors of its own and scores
# the tree or shared-prompt rows only for a model on flex attention (model.attn_implementation: flex)
LAYOUTS: tuple[Layout, ...] = (FLEX, TREE, PACKED, SHARED, ROWS)


@dataclass(frozen=True)
class LayoutChoice:
    """A run's layouts: `pack` (the packed and tree rows are built), `share_prompt` (true, false, or
    "auto": prompts of SHARE_MIN_PROMPT_TOKENS or more, settled per model by prefopt.scoring.sharing) and
    `buckets` (the token dimensions' widths, prefopt.scoring.buckets; None: each as long as its longest row)."""

    pack: bool = False
    share_prompt: bool | str = "auto"
    buckets: TokenBuckets | None = None

    @property
    def layouts(self) -> tuple[Layout, ...]:
        """The layouts the collator builds, in the order they are tried (the padded rows always)."""
        built = {ROWS, *((TREE, PACKED) if self.pack else ()), *((SHARED,) if self.share_prompt is not False else ())}
        return tuple(layout for layout in LAYOUTS if layout in built)


def packs_on(data_pack: Any, trainer: Mapping) -> bool:
    """`data.pack` resolved: true / false as set; "auto" packs when training on GPUs without sharded
    parameters (one pass per model instead of the shared prompt's two: about 2x faster a step on an
    H200, README, GPUs), not on CPUs (the committed studies' layout) nor under FSDP / DeepSpeed."""
    if data_pack != "auto":
        return bool(data_pack)
    accelerator = str(trainer.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    strategy = trainer.get("strategy", "auto")
    name = str(strategy.get("name") if isinstance(strategy, Mapping) else strategy).lower()
    packs = on_gpu and not any(kind in name for kind in ("fsdp", "deepspeed"))
    if packs:
        log.info("data.pack=auto: pairs packed end to end, each prompt once (training on GPUs)")
    return packs


def choose_layout(data_pack: Any = False, share_prompt: bool | str = "auto", trainer: Mapping | None = None,
                  buckets: TokenBuckets | None = None) -> LayoutChoice:
    """The run's `LayoutChoice` from `data.pack`, `share_prompt`, the trainer config and the token
    buckets (`prefopt.scoring.buckets.token_buckets`) (module docstring)."""
    if share_prompt not in (True, False, "auto"):
        raise ValueError(f"share_prompt={share_prompt!r}; one of true, false, auto")
    return LayoutChoice(pack=packs_on(data_pack, trainer or {}), share_prompt=share_prompt, buckets=buckets)


def batch_layout(batch: dict[str, Tensor], model: torch.nn.Module, share_prompt: bool | str = "auto") -> str:
    """The name of the layout `pair_batch_logps` scores `batch` on: "flex", "tree", "packed", "shared" or "rows"."""
    return scoring_layout(batch, model, share_prompt).name


def scoring_layout(batch: dict[str, Tensor], model: torch.nn.Module, share_prompt: bool | str = "auto") -> Layout:
    """The first of `LAYOUTS` that `model` scores `batch` on (the padded rows, at the latest)."""
    return next(layout for layout in LAYOUTS if layout.scores(batch, model, share_prompt))


def pair_batch_logps(model: torch.nn.Module, batch: dict[str, Tensor], share_prompt: bool | str = "auto",
                     per_token: bool = False):
    """(logps (2B,), n_tokens (2B,)) of a collated pair batch's responses given their prompts, on the
    layout `batch_layout` picks (same numbers every way). `per_token`: the scored tokens' log-probs
    unsummed, (logps (K,), rows (K,)), in the same order all ways."""
    return scoring_layout(batch, model, share_prompt).logps(model, batch, per_token=per_token)


def without_packing(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """`batch` without its packed layouts (the padded layouts only)."""
    return {k: v for k, v in batch.items() if not k.startswith(("packed_", "tree_"))}


def token_counts(batch: dict[str, Tensor], shared: bool, packed: bool = False, tree: bool = False) -> tuple[int, int]:
    """(real, processed) tokens the policy's pass over `batch` runs through the transformer: with
    `tree`, the prompt-once packed rows (N, C), real where a token has a pair; with `packed`, the
    packed rows (N, C), real where a token has a segment; with `shared`, each prompt once (B, P) plus
    the responses (2B, R); else the full rows (2B, L)."""
    layout = TREE if tree else PACKED if packed else SHARED if shared else ROWS
    return layout.token_counts(batch)
