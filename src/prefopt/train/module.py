"""PreferenceModule: the LightningModule that trains a causal LM on preference pairs.

It owns the forward passes (policy, frozen reference, marginal) and knows no loss by name: the loss
declares what it needs (`needs_reference`, `needs_marginal`, `marginal_source`) and turns a `PairLogps`
into per-pair losses, rewards and metrics. Log-probs of the frozen starting policy (reference, and the
marginal with `marginal=reference`) can instead come from tables indexed by each pair's dataset index
(`use_logp_table`, filled by prefopt.train.logp_cache); once they cover what the loss needs,
`release_reference()` drops the frozen copy. A LoRA policy (peft) keeps no copy at all: its frozen
passes run the same model with the adapters disabled (`frozen_scorer`). The reference never goes into
checkpoints (it is rebuilt from the starting policy). No-gradient passes (frozen and the live marginal)
run in eval mode: no dropout noise in δ or the log-ratios. `progress()` (the share of training a
scheduled loss sees) counts optimizer steps against `trainer.estimated_stepping_batches`.
Exercised by `pytest tests/test_module.py tests/test_progress.py tests/test_dropout.py` and
`python src/run.py loss=dpo|ipo|simpo|rmipo`.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Any, Iterator

import lightning as L
import torch
from torch import Tensor

from prefopt.errors import ConfigError
from prefopt.train.logps import pair_batch_logps, response_logps, settle_sharing
from prefopt.train.checkpointing import fill_frozen, trainable_only
from prefopt.train.gather import is_sharded
from prefopt.losses import PairLogps, PreferenceLoss
from prefopt.models.setup import is_lora
from prefopt.train.optim import Factory, default_factories, takes, warmup_cosine  # noqa: F401 (warmup_cosine: re-exported)


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model with no gradients, in eval mode (dropout off): the reference policy."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model` in eval mode (dropout off) for the duration, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class PreferenceModule(L.LightningModule):
    """Trains `policy` with `loss`; builds the frozen reference only when the loss needs it."""

    def __init__(
        self,
        policy: torch.nn.Module,
        loss: PreferenceLoss,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.1,
        min_lr_ratio: float = 0.0,
        reference: torch.nn.Module | None = None,
        share_prompt: bool | str = "auto",
        optimizer: Factory | None = None,
        scheduler: Factory | None = None,
    ) -> None:
        """`optimizer(param_groups)` and `scheduler(optimizer, total_steps=...)` come from `cfg.optim`
        (prefopt.train.optim); without them, AdamW and warmup + cosine from `lr` ... `min_lr_ratio`."""
        super().__init__()
        self.policy = policy
        self.loss_fn = loss
        defaults = default_factories(lr, weight_decay, adam_betas, warmup_ratio, min_lr_ratio)
        self.make_optimizer, self.make_scheduler = optimizer or defaults[0], scheduler or defaults[1]
        needs_frozen = bool(self.frozen_kinds())
        # with LoRA the starting policy is the policy with its adapters disabled: no second copy
        self.adapter_reference = needs_frozen and reference is None and is_lora(policy)
        self.reference = None
        if needs_frozen and not self.adapter_reference:
            self.reference = reference or frozen_copy(policy)
        self.share_prompt = share_prompt
        self._share: bool | str | None = None  # decided at the first pass (after a strategy wrapped the model)
        self._tables: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, split) -> buffer names
        self._checked: set[tuple[str, str]] = set()
        self._total_steps: int | None = None  # optimizer steps of this fit, set by configure_optimizers

    # ---- log-probs of the frozen starting policy: live passes or cached tables -------------------

    def frozen_kinds(self) -> list[str]:
        """Which log-probs of the frozen starting policy the loss needs: "reference", "marginal"."""
        kinds = ["reference"] if self.loss_fn.needs_reference else []
        if self.loss_fn.needs_marginal and self.loss_fn.marginal_source == "reference":
            kinds.append("marginal")
        return kinds

    def use_logp_table(self, kind: str, split: str, logps: Tensor, tokens: Tensor) -> None:
        """Serve `kind` log-probs of dataset `split` ("train" | "eval") from a table instead of a pass.

        logps: (N, 2) float summed log-probs [chosen, rejected] of pair index 0..N-1; tokens: (N, 2) the
        token counts they were summed over (checked against the batch on first use).
        """
        if kind not in ("reference", "marginal") or split not in ("train", "eval"):
            raise ValueError(f"unknown log-prob table kind={kind!r} split={split!r}")
        if logps.shape != tokens.shape or logps.ndim != 2 or logps.shape[1] != 2:
            raise ValueError(
                f"a log-prob table is (N, 2) logps and tokens, got {tuple(logps.shape)}, {tuple(tokens.shape)}"
            )
        names = (f"_table_{kind}_{split}_logps", f"_table_{kind}_{split}_tokens")
        self.register_buffer(names[0], logps.float(), persistent=False)
        self.register_buffer(names[1], tokens.long(), persistent=False)
        self._tables[(kind, split)] = names
        self._checked.discard((kind, split))

    def has_tables(self, kind: str) -> bool:
        return all((kind, split) in self._tables for split in ("train", "eval"))

    def release_reference(self) -> bool:
        """Drop the frozen copy when tables cover every frozen log-prob the loss needs; True if dropped."""
        if self.reference is None or not all(self.has_tables(kind) for kind in self.frozen_kinds()):
            return False
        self.reference = None
        return True

    def _from_table(self, kind: str, split: str, batch: dict[str, Tensor], tokens: Tensor):
        """(logps (2B,), tokens (2B,)) of `kind` for the batch's pairs, or None without a table."""
        names = self._tables.get((kind, split))
        if names is None:
            return None
        table, counts = getattr(self, names[0]), getattr(self, names[1])
        index = batch["index"].to(table.device)
        first_use = (kind, split) not in self._checked  # check once per table (a check syncs a GPU)
        if first_use and index.numel() and int(index.max()) >= table.shape[0]:
            raise RuntimeError(
                f"the cached {kind} log-prob table of the {split} split has {table.shape[0]} pairs but the batch "
                f"asks for pair index {int(index.max())}: the cache does not belong to this dataset"
            )
        logps = torch.cat([table[index, 0], table[index, 1]])
        cached_tokens = torch.cat([counts[index, 0], counts[index, 1]])
        if first_use:  # the table belongs to these pairs: same token counts
            if not torch.equal(cached_tokens, tokens.to(cached_tokens.device)):
                raise RuntimeError(
                    f"the cached {kind} log-probs of the {split} split were summed over other token counts than "
                    "this batch's responses: the cache does not belong to this data (delete it, or set "
                    "logp_cache=false)"
                )
            self._checked.add((kind, split))
        return logps, cached_tokens

    def train(self, mode: bool = True) -> "PreferenceModule":
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # the reference never leaves eval mode
        return self

    @contextmanager
    def frozen_scorer(self, kind: str = "reference") -> Iterator[torch.nn.Module]:
        """The starting policy for no-gradient passes: the frozen copy, or (LoRA) the policy with its
        adapters disabled and in eval mode for the duration."""
        if self.reference is not None:
            yield self.reference
            return
        if not self.adapter_reference:
            raise RuntimeError(
                f"the loss needs {kind} log-probs of the starting policy, but the reference model was released "
                "and no cached table covers this split"
            )
        with eval_mode(self.policy), self.policy.disable_adapter():
            yield self.policy

    def shares_prompt(self) -> bool | str:
        """Whether passes run each prompt once for both responses: `share_prompt` (true, false, or "auto":
        batches with long enough prompts), but never under activation checkpointing (HF's or FSDP's): a
        recomputed layer would append to the prompt's key/value cache a second time; nor under FSDP /
        ZeRO-3, which gather weights in every pass, so all ranks must run the same passes while "auto"
        decides per batch (prompt lengths differ by rank)."""
        if self._share is None:
            checkpointed = any(
                getattr(m, "gradient_checkpointing", False) is True or type(m).__name__ == "CheckpointWrapper"
                for m in self.policy.modules()
            )
            sharded = self._trainer is not None and is_sharded(self._trainer.strategy)
            self._share = False if checkpointed or sharded else self.share_prompt
        return self._share

    def pair_logps(self, batch: dict[str, Tensor], split: str = "train") -> PairLogps:
        """Policy log-probs of chosen and rejected in one forward, plus what the loss declares it needs.

        `split` ("train" | "eval") picks the cached tables that `batch["index"]` points into.
        """
        n = batch["index"].shape[0]
        share = self._share = settle_sharing(self.policy, batch, self.shares_prompt())
        logps, tokens = pair_batch_logps(self.policy, batch, share)
        fields: dict[str, Any] = dict(
            chosen=logps[:n], rejected=logps[n:], chosen_tokens=tokens[:n], rejected_tokens=tokens[n:]
        )
        if self.loss_fn.needs_reference:
            cached = self._from_table("reference", split, batch, tokens)
            if cached is not None:
                ref = cached[0]
            else:
                with torch.no_grad(), self.frozen_scorer("reference") as scorer:
                    ref, _ = pair_batch_logps(scorer, batch, share)
            fields.update(ref_chosen=ref[:n], ref_rejected=ref[n:])
        if self.loss_fn.needs_marginal:
            frozen = self.loss_fn.marginal_source == "reference"
            cached = self._from_table("marginal", split, batch, tokens) if frozen else None
            if cached is not None:
                marg, marg_tokens = cached
            else:
                # the live marginal pass is a measurement, not a training pass: no dropout noise in δ
                scope = self.frozen_scorer("marginal") if frozen else eval_mode(self.policy)
                with torch.no_grad(), scope as scorer:
                    marg, marg_tokens = response_logps(
                        scorer,
                        batch["marginal_input_ids"],
                        batch["marginal_attention_mask"],
                        batch["marginal_score_mask"],
                    )
            fields.update(
                marginal_chosen=marg[:n],
                marginal_rejected=marg[n:],
                marginal_chosen_tokens=marg_tokens[:n],
                marginal_rejected_tokens=marg_tokens[n:],
            )
        return PairLogps(**fields)

    def progress(self) -> float:
        """Share of training done, by optimizer steps: global step / (total steps - 1), so 0 during the
        first optimizer step and 1.0 during the last (all micro-batches of one step share its value).
        The total is Lightning's `estimated_stepping_batches` (max_steps, or epochs × batches per epoch ÷
        accumulation), fixed when the optimizer is configured; 0 before that."""
        trainer, total = self._trainer, self._total_steps
        if trainer is None or not total:
            return 0.0
        return 1.0 if total <= 1 else min(1.0, trainer.global_step / (total - 1))

    def _logs_this_step(self) -> bool:
        """Whether a training step's metrics would reach the loggers (every `log_every_n_steps`, and the
        last step for the final metrics). Lightning's `self.log` costs ~0.2 ms a call, about 10% of a
        small model's step, so the other steps skip it."""
        trainer = self._trainer
        connector = getattr(trainer, "_logger_connector", None)
        if trainer is None or connector is None or connector.should_update_logs:
            return True
        return bool(self._total_steps and trainer.global_step + 1 >= self._total_steps)

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        logps = self.pair_logps(batch, split="train" if stage == "train" else "eval")
        out = self.loss_fn(logps, progress=self.progress())
        loss = out.losses.mean()
        train = stage == "train"
        if train and not self._logs_this_step():
            return loss
        margins = out.chosen_rewards - out.rejected_rewards
        metrics = {
            "loss": loss.detach(),
            "rewards/chosen": out.chosen_rewards.mean(),
            "rewards/rejected": out.rejected_rewards.mean(),
            "rewards/margins": margins.mean(),
            "rewards/accuracies": (margins > 0).float().mean(),
            "logps/chosen": logps.chosen.detach().mean(),
            "logps/rejected": logps.rejected.detach().mean(),
            **{k: v.detach() for k, v in out.metrics.items()},
        }
        self.log_dict(
            {f"{stage}/{k}": v for k, v in metrics.items()},
            on_step=train,
            on_epoch=not train,
            batch_size=logps.chosen.shape[0],
        )
        self.log(f"{stage}_loss", loss.detach(), prog_bar=True, on_step=train, on_epoch=not train,
                 batch_size=logps.chosen.shape[0], logger=False)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen reference out: it is the starting policy, rebuilt when a run resumes; a LoRA
        policy keeps only its adapters (prefopt.train.checkpointing; not under FSDP/ZeRO-3, which save shards)."""
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]
        if self._trainer is None or not is_sharded(self._trainer.strategy):
            trainable_only(self.policy, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fill in the reference this run holds (or drop one an older checkpoint carries)."""
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]
        if self.reference is not None:
            state.update({f"reference.{k}": v for k, v in self.reference.state_dict().items()})
        fill_frozen(self.policy, checkpoint)  # a LoRA checkpoint's frozen base weights: this run's own

    def _fused_adam(self, params: list[Tensor]) -> bool:
        """The fused AdamW kernel (what HF Trainer and so TRL use by default): on one CPU thread 15 ms a
        step for 21.7M parameters against 130-145 ms for the default per-tensor loop. Not under DeepSpeed,
        which steps the optimizer on its own partitions."""
        trainer = self._trainer
        if trainer is not None and "deepspeed" in type(trainer.strategy).__name__.lower():
            return False
        return bool(params) and all(
            p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
            for p in params
        )

    def training_length(self) -> int:
        """Optimizer steps this fit takes (`trainer.estimated_stepping_batches`); a ConfigError when it
        cannot be known (no step or epoch limit, or data of unknown length without max_steps), which the
        learning-rate schedule and any loss that `needs_progress` require."""
        total = self.trainer.estimated_stepping_batches
        if math.isfinite(total) and total > 0:
            return int(total)
        users = "the learning-rate schedule" + (
            f" and loss {self.loss_fn.name} (its settings follow the share of training done)"
            if getattr(self.loss_fn, "needs_progress", False) else "")
        raise ConfigError(f"the number of optimizer steps cannot be known (trainer.max_steps="
                          f"{self.trainer.max_steps}, trainer.max_epochs={self.trainer.max_epochs}), and "
                          f"{users} need it: set trainer.max_steps or trainer.max_epochs")

    def configure_optimizers(self):
        """The configured optimizer over two groups: matrices, and the rest (biases, norms) without
        weight decay; the schedule steps per optimizer step."""
        decay, no_decay = [], []
        for p in self.policy.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        fused = {"fused": self._fused_adam(decay + no_decay) or None} if takes(self.make_optimizer, "fused") else {}
        optimizer = self.make_optimizer([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], **fused)
        total = self._total_steps = self.training_length()
        schedule = self.make_scheduler(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
