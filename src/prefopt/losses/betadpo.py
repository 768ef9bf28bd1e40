"""β-DPO (Wu et al., 2024, "β-DPO: Direct Preference Optimization with Dynamic β", NeurIPS 2024): DPO
whose β is recalibrated every batch from the batch's reward discrepancy, with an optional
β-guided data filter.

M_i = (s_w - ref_w) - (s_l - ref_l), the pair's implicit reward margin (log-ratio units, no β), no gradient.
Running statistics, updated with each training batch before it is used (momentum m = 0.9):
    M0 <- m·M0 + (1-m)·mean_i M_i;   σ0 <- m·σ0 + (1-m)·std_i M_i   (both start at 0).
Filter (`filter: true`): draw k = int(B·(1 - filter_ratio)) pairs without replacement with probability
∝ exp(-(M_i - M0)² / (2σ0²)) (a Gaussian band around M0: outliers are dropped); the loss is the mean
over the kept pairs. Without the filter every pair is kept.
    β_batch = max(β0·(1 + α·(mean_{kept} M_i - M0)), 1e-3);  loss_i = -logσ(β_batch·M_i);
    reward = β0(s - ref).
Checked against the authors' code (junkangwu/beta-DPO, trainers.py: `update_and_sync_tensor_mean` with
gamma = 0.9 and the `mode_loss == "beta_DPO"` branch of `preference_loss`, whose weights, multinomial
draw, β clamp at 1e-3 and kept-pair mean are written out in tests/test_trl_parity_new_losses.py and
compared batch after batch), and α = 0 against TRL 1.16's DPOTrainer (loss_type="sigmoid").
Defaults: β0 = 0.1, α = 0.6 and a filtered share of 0.2: the authors' README example
(`loss.beta=0.1 loss.a=0.6 loss.mode_weight=0.2`); momentum 0.9 as in their trainer. The filter is
off by default here (`filter: false`); the authors' β-DPO mode always filters (mode_weight 0 = off).
Differences from that code, on purpose: (1) the running statistics move on training batches only
(theirs also move on evaluation batches); here a validation pass leaves them alone (`self.training`,
which Lightning's train/eval switching sets); (2) σ0 is floored at 1e-6, a batch of one counts as std 0,
k is at least 1, and Gaussian weights are floored at 1e-30 so the draw never fails (theirs divides by
a zero σ0 when all margins are equal); (3) with several GPUs each rank uses its own batch's margins
(theirs all-gather them first); DDP broadcasts rank 0's buffers at each forward, so ranks agree.
Per-pair losses under the filter are ℓ_i·B/k for kept pairs and 0 for dropped ones, so the batch mean
the module takes is the authors' mean over kept pairs.

State: the one documented exception to "a loss holds no state between calls". The running M0 and σ0
are registered buffers of this loss, which is a `torch.nn.Module`; the training module holds the loss
as a child (`PreferenceModule.loss_fn`), so they follow its device, appear in its state_dict
(`loss_fn.margin_mean`, `loss_fn.margin_std`) and are saved in and restored from checkpoints: a
resume continues exactly. They stay float32 whatever dtype the module is cast to.
Exercised by: `.venv/bin/python -m pytest tests/losses/test_loss_betadpo.py -q`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from prefopt.losses.base import ConfigError, LossOutput, PairLogps, PreferenceLoss, check

MIN_BETA = 1e-3  # the authors' clamp on β_batch
MIN_STD = 1e-6  # floor on σ0 in the filter's Gaussian weights
MIN_WEIGHT = 1e-30  # floor on a filter weight: every pair keeps a (tiny) chance of being drawn


class BetaDPOLoss(PreferenceLoss, torch.nn.Module):
    """DPO with a batch-level dynamic β and an optional β-guided filter. Needs the reference policy.
    Holds running margin statistics (buffers `margin_mean`, `margin_std`) updated in training mode."""

    name = "betadpo"
    needs_reference = True
    # β0 0.01-1: DPO's usual range (DPOLoss.beta_range); the paper's experiments start from β0 = 0.1.
    beta_range = (0.01, 1.0)
    stall_loss = math.log(2)  # -log σ(β_batch·0): every M_i = 0 while policy == reference, whatever β_batch

    def __init__(
        self,
        beta: float = 0.1,
        alpha: float = 0.6,
        momentum: float = 0.9,
        filter: bool = False,  # noqa: A002 (the config key)
        filter_ratio: float = 0.2,
    ) -> None:
        torch.nn.Module.__init__(self)
        check("BetaDPOLoss", "beta", beta, lambda v: v > 0, "a number > 0")
        check("BetaDPOLoss", "alpha", alpha, lambda v: v >= 0, "a number >= 0")
        check("BetaDPOLoss", "momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)")
        if not isinstance(filter, bool):
            raise ConfigError(f"BetaDPOLoss: filter={filter!r} is not allowed; filter must be true or false")
        check("BetaDPOLoss", "filter_ratio", filter_ratio, lambda v: 0 <= v < 1, "in [0, 1)")
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.momentum = float(momentum)
        self.filter = filter
        self.filter_ratio = float(filter_ratio)
        self.register_buffer("margin_mean", torch.zeros((), dtype=torch.float32))  # M0
        self.register_buffer("margin_std", torch.zeros((), dtype=torch.float32))  # σ0

    def _apply(self, fn: Any, recurse: bool = True) -> "BetaDPOLoss":
        """Follow device moves, but keep the running statistics float32 and exact: a module cast to
        bf16 (bf16-true precision, DeepSpeed) would round M0 and let it drift."""
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for key, old in before.items():
            new = self._buffers[key]
            if old is not None and new is not None and new.dtype != old.dtype:
                self._buffers[key] = old.to(new.device)
        return self

    def compute(self, logps: PairLogps, progress: float = 0.0) -> LossOutput:
        # Reference log-probs are constants: never let a gradient reach them.
        chosen_ratio = logps.chosen - logps.ref_chosen.detach()
        rejected_ratio = logps.rejected - logps.ref_rejected.detach()
        h = chosen_ratio - rejected_ratio
        gap = h.detach().float()
        n = gap.shape[0]
        mean = self.margin_mean.to(gap.device)
        std = self.margin_std.to(gap.device)
        if self.training:
            batch_std = gap.std() if n > 1 else torch.zeros((), device=gap.device)
            mean = self.momentum * mean + (1 - self.momentum) * gap.mean()
            std = self.momentum * std + (1 - self.momentum) * batch_std
            self.margin_mean.copy_(mean)
            self.margin_std.copy_(std)
        metrics = {"margin/running_mean": mean.detach().clone(), "margin/running_std": std.detach().clone()}
        keep = None
        if self.filter:
            weights = torch.exp(-0.5 * ((gap - mean) / std.clamp(min=MIN_STD)).pow(2)).clamp(min=MIN_WEIGHT)
            k = max(1, int(n * (1 - self.filter_ratio)))
            index = torch.multinomial(weights, k, replacement=False)
            keep = torch.zeros_like(gap)
            keep[index] = 1.0
            batch_margin = gap[index].mean()
            metrics["filter/kept"] = keep.mean()
        else:
            batch_margin = gap.mean()
        beta_batch = (self.beta * (1 + self.alpha * (batch_margin - mean))).clamp(min=MIN_BETA)
        losses = -F.logsigmoid(beta_batch.to(h.dtype) * h)
        if keep is not None:
            losses = losses * keep.to(losses.dtype) * (n / keep.sum())
        metrics["margin/batch"] = batch_margin
        metrics["beta/used"] = beta_batch
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_ratio).detach(),
            rejected_rewards=(self.beta * rejected_ratio).detach(),
            metrics=metrics,
        )
