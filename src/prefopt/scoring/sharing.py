"""Whether a pass runs each prompt once: the shared-prompt pass checked against full rows, once per model.

`settle_sharing` turns a `share_prompt="auto"` into true or false at the first batch that would share,
by `check_shared_prompt` (the shared pass must reproduce the full rows' per-token log-probs: an
architecture whose cache or masks do not fit the shared layout scores full rows instead), and
`sharing_allowed` says when a training pass must not share at all (activation checkpointing, sharded
parameters). The setting itself is chosen once per run (prefopt.scoring.layout.choose_layout); the
frozen side (prefopt.scoring.frozen.FrozenScorers) asks these. Exercised by `pytest tests/test_logps.py
tests/test_frozen.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.log import get_logger
from prefopt.scoring.layout import pair_batch_logps, without_packing
from prefopt.scoring.logps import check_tolerance, probe_pass
from prefopt.scoring.shared import shares_batch_prompt

log = get_logger()


@torch.no_grad()
def check_shared_prompt(model: torch.nn.Module, batch: dict[str, Tensor], tolerance: float | None = None) -> str | None:
    """None when the shared-prompt pass reproduces `model`'s full-row log-probs on `batch` token by token,
    |shared - full| <= tolerance·(1 + |full|) (default `check_tolerance`), run in eval mode and without
    autocast (a mismatch then means the layout, not rounding); else what went wrong: an architecture
    whose cache or masks do not fit the shared layout."""
    tolerance = check_tolerance(model) if tolerance is None else tolerance
    batch = without_packing(batch)
    got, problem = probe_pass(model, lambda: (pair_batch_logps(model, batch, share_prompt=True, per_token=True)[0],
                                              pair_batch_logps(model, batch, share_prompt=False, per_token=True)[0]))
    if problem:
        return problem
    shared, rows = got
    if shared.shape != rows.shape:
        return f"the shared pass scored {shared.numel()} tokens, full rows {rows.numel()}"
    excess = (shared - rows).abs() - tolerance * (1 + rows.abs())
    if rows.numel() and float(excess.max()) > 0:
        worst = int(excess.argmax())
        return (f"per-token log-probs differ by up to {float((shared - rows).abs().max()):.3g} "
                f"({float(shared[worst]):.4g} against {float(rows[worst]):.4g}; tolerance {tolerance:.3g}·(1 + |log p|))")
    return None


def settle_sharing(model: torch.nn.Module, batch: dict[str, Tensor], share_prompt: bool | str) -> bool | str:
    """`share_prompt` after `batch`: "auto" turns into True or False at the first batch that would share,
    by `check_shared_prompt` on it (False, with a message, for a model the shared pass does not fit);
    any other value, or a batch that would not share, leaves it as it is."""
    if share_prompt != "auto" or not shares_batch_prompt(batch, "auto"):
        return share_prompt
    problem = check_shared_prompt(model, batch)
    if problem:
        log.info(f"share_prompt=auto: the shared-prompt pass does not reproduce "
                 f"{type(model).__name__}'s log-probs ({problem}); scoring full rows")
    return problem is None


def activation_checkpointed(model: torch.nn.Module) -> bool:
    """Whether any layer recomputes its activations in the backward (HF's or FSDP's checkpointing)."""
    return any(getattr(m, "gradient_checkpointing", False) is True or type(m).__name__ == "CheckpointWrapper"
               for m in model.modules())


def sharing_allowed(policy: torch.nn.Module, sharded: bool) -> bool:
    """Whether training passes may run each prompt once: never under activation checkpointing (HF's or
    FSDP's: a recomputed layer would append to the prompt's key/value cache a second time), nor with
    sharded parameters (FSDP / ZeRO-3 gather weights in every pass, so all ranks must run the same
    passes while "auto" decides per batch, and prompt lengths differ by rank)."""
    return not sharded and not activation_checkpointed(policy)
