"""PreferenceModule: the LightningModule that trains a causal LM on preference pairs.

It owns the forward passes (policy, frozen reference, marginal) and knows no loss by name: the loss
declares what it needs (`needs_reference`, `needs_marginal`, `marginal_source`) and turns a `PairLogps`
into per-pair losses, rewards and metrics. Exercised by `python src/run.py loss=dpo|ipo|simpo|rmipo`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from prefopt.logps import response_logps
from prefopt.losses import PairLogps, PreferenceLoss


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model with no gradients, in eval mode (dropout off): the reference policy."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup over `warmup` steps, then cosine decay to `min_ratio`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


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
    ) -> None:
        super().__init__()
        self.policy = policy
        self.loss_fn = loss
        self.lr, self.weight_decay, self.adam_betas = lr, weight_decay, tuple(adam_betas)
        self.warmup_ratio, self.min_lr_ratio = warmup_ratio, min_lr_ratio
        wants_reference = loss.needs_reference or (loss.needs_marginal and loss.marginal_source == "reference")
        self.reference = (reference or frozen_copy(policy)) if wants_reference else None

    def train(self, mode: bool = True) -> "PreferenceModule":
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # the reference never leaves eval mode
        return self

    def pair_logps(self, batch: dict[str, Tensor]) -> PairLogps:
        """Policy log-probs of chosen and rejected in one forward, plus what the loss declares it needs."""
        n = batch["index"].shape[0]
        logps, tokens = response_logps(self.policy, batch["input_ids"], batch["attention_mask"], batch["score_mask"])
        fields: dict[str, Any] = dict(
            chosen=logps[:n], rejected=logps[n:], chosen_tokens=tokens[:n], rejected_tokens=tokens[n:]
        )
        if self.loss_fn.needs_reference:
            with torch.no_grad():
                ref, _ = response_logps(
                    self.reference, batch["input_ids"], batch["attention_mask"], batch["score_mask"]
                )
            fields.update(ref_chosen=ref[:n], ref_rejected=ref[n:])
        if self.loss_fn.needs_marginal:
            scorer = self.policy if self.loss_fn.marginal_source == "policy" else self.reference
            with torch.no_grad():
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
        """Share of training done: global step / max_steps (0 without a step-limited trainer)."""
        trainer = self._trainer
        if trainer is None or not trainer.max_steps or trainer.max_steps <= 0:
            return 0.0
        return min(1.0, trainer.global_step / trainer.max_steps)

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        logps = self.pair_logps(batch)
        out = self.loss_fn(logps, progress=self.progress())
        loss = out.losses.mean()
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
        train = stage == "train"
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

    def configure_optimizers(self):
        decay, no_decay = [], []
        for p in self.policy.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
            betas=self.adam_betas,
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(self.warmup_ratio * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, warmup, self.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
