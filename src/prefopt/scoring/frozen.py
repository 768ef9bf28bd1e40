"""The frozen side of a preference run: where the reference and marginal log-probs come from.

`FrozenScorers` reads what the loss declares (`needs_reference`, `needs_marginal`, `marginal_source`)
and answers, per batch, the `ref_*` and `marginal_*` fields of `PairLogps`. Each kind of log-prob has
one source (`source(kind, split)`):

- "table": a cached table of the starting policy's log-probs, indexed by each pair's dataset index
  (filled by prefopt.scoring.logp_cache through `use_table`; checked against the batch on first use);
- "copy": a pass of the frozen copy of the starting policy (`reference`, eval mode, no gradients);
- "adapters": a LoRA policy (peft) keeps no copy: the policy itself with its adapters disabled;
- "policy": the live marginal (`marginal=policy`), a no-gradient pass of the policy in eval mode.

A live marginal pass ("copy", "adapters", "policy") scores the marginal rows with the collator's plan
(`marginal_plan_*`, prefopt.scoring.marginal), reading nothing back from the device.
Once tables cover every kind the loss needs, `release_reference()` drops the copy. No-gradient passes
run in eval mode, so no dropout noise reaches the log-ratios or δ.

It holds the run's `share_prompt` (chosen once, prefopt.scoring.layout.choose_layout) and asks
prefopt.scoring.sharing whether a pass may use it: `shares_prompt()` (never under activation
checkpointing or FSDP / ZeRO-3, `sharing_allowed`) and `sharing(batch)` (an "auto" settled on the first
batch that would share, `settle_sharing`) for the training passes; `table_sharing` for the table builds,
which run unwrapped and without gradients before fit, so neither guard applies to them.

Its tensors live on `host` (the LightningModule): the copy is the host's child `reference` and the
tables its non-persistent buffers `_table_<kind>_<split>_{logps,tokens}`, so they move, convert and
shard with the module and its state_dict keys stay `policy.*` and `reference.*`.
Exercised by `pytest tests/test_frozen.py tests/test_module.py tests/test_lora.py tests/test_logp_cache.py`.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator

import torch
from torch import Tensor

from prefopt.contracts.predicates import is_lora, is_sharded
from prefopt.scoring.layout import pair_batch_logps
from prefopt.scoring.logps import batch_plan, eval_mode, response_logps
from prefopt.scoring.sharing import settle_sharing, sharing_allowed

KINDS = ("reference", "marginal")
SPLITS = ("train", "eval")


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model with no gradients, in eval mode (dropout off): the reference policy."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


@contextmanager
def adapters_disabled(policy: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """A LoRA policy as its starting policy: adapters disabled and eval mode for the duration."""
    with eval_mode(policy), policy.disable_adapter():
        yield policy


def frozen_kinds(loss: Any) -> list[str]:
    """Which log-probs of the frozen starting policy `loss` needs: "reference", "marginal"."""
    kinds = ["reference"] if loss.needs_reference else []
    if loss.needs_marginal and loss.marginal_source == "reference":
        kinds.append("marginal")
    return kinds


class FrozenScorers:
    """The reference and marginal log-probs of one run (see the module docstring)."""

    def __init__(self, host: torch.nn.Module, policy: torch.nn.Module, loss: Any, share_prompt: bool | str = "auto",
                 reference: torch.nn.Module | None = None) -> None:
        """Builds the frozen copy on `host` when the loss needs one and the policy is not LoRA (or takes
        `reference` as that copy)."""
        self.host, self.policy, self.loss = host, policy, loss
        self.kinds = frozen_kinds(loss)
        # with LoRA the starting policy is the policy with its adapters disabled: no second copy
        self.adapters = bool(self.kinds) and reference is None and is_lora(policy)
        needs_copy = bool(self.kinds) and not self.adapters
        host.reference = (reference or frozen_copy(policy)) if needs_copy else None
        self.share_prompt = share_prompt
        self._share: bool | str | None = None  # decided at the first pass (after a strategy wrapped the model)
        self._tables: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, split) -> buffer names on host
        self._checked: set[tuple[str, str]] = set()

    @property
    def reference(self) -> torch.nn.Module | None:
        """The frozen copy of the starting policy, None without one (not needed, LoRA, or released)."""
        return getattr(self.host, "reference", None)

    # ---- where each kind comes from ----------------------------------------------------------------

    def source(self, kind: str, split: str = "train") -> str | None:
        """Where `kind` log-probs of `split` come from: "table", "copy", "adapters", "policy" (the live
        marginal), "released" (nowhere: an error at the next pass), or None when the loss needs none."""
        if kind == "marginal" and self.loss.needs_marginal and self.loss.marginal_source != "reference":
            return "policy"
        if kind not in self.kinds:
            return None
        if (kind, split) in self._tables:
            return "table"
        if self.reference is not None:
            return "copy"
        return "adapters" if self.adapters else "released"

    def _live(self, where: str | None, kind: str) -> ContextManager[torch.nn.Module]:
        """The model a `where` pass runs, for the duration (eval mode)."""
        if where == "copy":
            return nullcontext(self.reference)
        if where == "adapters":
            return adapters_disabled(self.policy)
        if where == "policy":
            return eval_mode(self.policy)
        raise RuntimeError(
            f"the loss needs {kind} log-probs of the starting policy, but the reference model was released "
            "and no cached table covers this split"
        )

    def scorer(self, kind: str = "reference") -> ContextManager[torch.nn.Module]:
        """The starting policy for no-gradient passes (what the tables are built with): the frozen copy,
        or (LoRA) the policy with its adapters disabled and in eval mode for the duration."""
        return self._live("copy" if self.reference is not None else "adapters" if self.adapters else None, kind)

    # ---- cached tables -----------------------------------------------------------------------------

    def use_table(self, kind: str, split: str, logps: Tensor, tokens: Tensor) -> None:
        """Serve `kind` log-probs of dataset `split` ("train" | "eval") from a table instead of a pass.

        logps: (N, 2) float summed log-probs [chosen, rejected] of pair index 0..N-1; tokens: (N, 2) the
        token counts they were summed over (checked against the batch on first use).
        """
        if kind not in KINDS or split not in SPLITS:
            raise ValueError(f"unknown log-prob table kind={kind!r} split={split!r}")
        if logps.shape != tokens.shape or logps.ndim != 2 or logps.shape[1] != 2:
            raise ValueError(
                f"a log-prob table is (N, 2) logps and tokens, got {tuple(logps.shape)}, {tuple(tokens.shape)}"
            )
        names = (f"_table_{kind}_{split}_logps", f"_table_{kind}_{split}_tokens")
        self.host.register_buffer(names[0], logps.float(), persistent=False)
        self.host.register_buffer(names[1], tokens.long(), persistent=False)
        self._tables[(kind, split)] = names
        self._checked.discard((kind, split))

    def has_tables(self, kind: str) -> bool:
        return all((kind, split) in self._tables for split in SPLITS)

    def release_reference(self) -> bool:
        """Drop the frozen copy when tables cover every frozen log-prob the loss needs; True if dropped."""
        if self.reference is None or not all(self.has_tables(kind) for kind in self.kinds):
            return False
        self.host.reference = None
        return True

    def _from_table(self, kind: str, split: str, batch: dict[str, Tensor], tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(logps (2B,), tokens (2B,)) of `kind` for the batch's pairs, from its table."""
        names = self._tables[(kind, split)]
        table, counts = getattr(self.host, names[0]), getattr(self.host, names[1])
        index = batch["index"].to(table.device)
        first_use = (kind, split) not in self._checked  # check once per table (a check syncs a GPU)
        if first_use and index.numel() and int(index.max()) >= table.shape[0]:
            raise RuntimeError(
                f"the cached {kind} log-prob table of the {split} split has {table.shape[0]} pairs but the batch "
                f"asks for pair index {int(index.max())}: the cache does not belong to this dataset"
            )
        logps = torch.cat([table[index, 0], table[index, 1]])
        cached_tokens = torch.cat([counts[index, 0], counts[index, 1]])
        if first_use:  # the table belongs to these pairs: same token counts as this batch's rows
            if kind == "marginal" and "marginal_score_mask" in batch:  # n-1 with marginal_context=none
                tokens = batch["marginal_score_mask"][:, 1:].sum(dim=1)
            if not torch.equal(cached_tokens, tokens.to(cached_tokens.device)):
                raise RuntimeError(
                    f"the cached {kind} log-probs of the {split} split were summed over other token counts than "
                    "this batch's responses: the cache does not belong to this data (delete it, or set "
                    "logp_cache=false)"
                )
            self._checked.add((kind, split))
        return logps, cached_tokens

    # ---- whether prompts are shared ----------------------------------------------------------------

    def shares_prompt(self) -> bool | str:
        """Whether training passes run each prompt once for both responses: the run's `share_prompt`
        (true, false, or "auto": batches with long enough prompts) where prefopt.scoring.sharing.
        sharing_allowed allows it (no activation checkpointing, no FSDP / ZeRO-3), else false."""
        if self._share is None:
            trainer = getattr(self.host, "_trainer", None)
            sharded = trainer is not None and is_sharded(trainer.strategy)
            self._share = self.share_prompt if sharing_allowed(self.policy, sharded) else False
        return self._share

    def sharing(self, batch: dict[str, Tensor]) -> bool | str:
        """`shares_prompt()` after `batch`: an "auto" is checked and settled on the first batch that would
        share (prefopt.scoring.sharing.settle_sharing), then kept for every later pass."""
        self._share = settle_sharing(self.policy, batch, self.shares_prompt())
        return self._share

    @property
    def table_sharing(self) -> bool | str:
        """`share_prompt` for building the tables: the setting itself (each build settles an "auto" on its
        own scorer); the builds run before fit, unwrapped and without gradients."""
        return self.share_prompt

    # ---- the log-probs -----------------------------------------------------------------------------

    def _pass(self, kind: str, split: str, batch: dict[str, Tensor], tokens: Tensor,
              share: bool | str) -> tuple[Tensor, Tensor]:
        """(logps (2B,), tokens (2B,)) of `kind` from its source; `tokens`: the policy pass's counts."""
        where = self.source(kind, split)
        if where == "table":
            return self._from_table(kind, split, batch, tokens)
        with torch.no_grad(), self._live(where, kind) as model:
            if kind == "reference":
                return pair_batch_logps(model, batch, share)
            return response_logps(model, batch["marginal_input_ids"], batch["marginal_attention_mask"],
                                  batch["marginal_score_mask"], plan=batch_plan(batch, "marginal_"))

    def logps(self, batch: dict[str, Tensor], split: str, tokens: Tensor, share: bool | str) -> dict[str, Tensor]:
        """The `ref_*` and `marginal_*` fields of `PairLogps` the loss needs for `batch` (none when it
        needs neither). `split` picks the tables `batch["index"]` points into; `tokens` (2B,) are the
        policy pass's counts (a table is checked against them); `share`: `sharing(batch)`."""
        n = batch["index"].shape[0]
        fields: dict[str, Tensor] = {}
        if self.loss.needs_reference:
            ref, _ = self._pass("reference", split, batch, tokens, share)
            fields.update(ref_chosen=ref[:n], ref_rejected=ref[n:])
        if self.loss.needs_marginal:
            marg, counts = self._pass("marginal", split, batch, tokens, share)
            fields.update(marginal_chosen=marg[:n], marginal_rejected=marg[n:],
                          marginal_chosen_tokens=counts[:n], marginal_rejected_tokens=counts[n:])
        return fields
