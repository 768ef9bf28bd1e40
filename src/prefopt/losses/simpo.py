"""SimPO (Meng et al., 2024): reference-free logistic loss on length-averaged log-probs, fixed margin.

loss = -(1-ε)·logσ(β(s̄_w - s̄_l) - γ) - ε·logσ(-β(s̄_w - s̄_l) + γ), γ = β·gamma_beta_ratio;
reward = β·s̄; plus sft_weight·(-s̄_w) when sft_weight > 0.
Exercised by: `.venv/bin/python -m pytest tests/losses/test_loss_simpo.py -q`.
"""

from __future__ import annotations

import math

from prefopt.losses.base import (
    LossOutput,
    PairLogps,
    PreferenceLoss,
    check,
    length_average,
    smoothed_sigmoid_loss,
)


class SimPOLoss(PreferenceLoss):
    """Simple Preference Optimization, with optional label smoothing and SFT term on the chosen."""

    name = "simpo"
    # β 0.01-10: the SimPO paper recommends 2-10 (for 7-8B models, 2.0-2.5 in most of its settings);
    # this project's tiny-model IMDb study found 0.02 best (conf/tuned/simpo_imdb.yaml: with Adam the
    # update hardly depends on β's scale as β -> 0), so the low end reaches 0.01.
    beta_range = (0.01, 10.0)
    stall_loss = math.log(2)  # -log σ(0): where the loss sits when β(s̄_w - s̄_l) - γ stays at 0 (β -> 0)

    def __init__(
        self,
        beta: float = 2.0,
        gamma_beta_ratio: float = 0.5,
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
    ) -> None:
        check("SimPOLoss", "beta", beta, lambda v: v > 0, "a number > 0")
        check("SimPOLoss", "gamma_beta_ratio", gamma_beta_ratio, lambda v: v >= 0, "a number >= 0")
        check("SimPOLoss", "label_smoothing", label_smoothing, lambda v: 0 <= v < 0.5, "in [0, 0.5)")
        check("SimPOLoss", "sft_weight", sft_weight, lambda v: v >= 0, "a number >= 0")
        self.beta = float(beta)
        self.gamma_beta_ratio = float(gamma_beta_ratio)
        self.label_smoothing = float(label_smoothing)
        self.sft_weight = float(sft_weight)

    @property
    def gamma(self) -> float:
        """The target reward margin γ = β·gamma_beta_ratio."""
        return self.beta * self.gamma_beta_ratio

    def gamma_at(self, progress: float) -> float:
        """The margin used at `progress` (share of training done); fixed here, scheduled in subclasses."""
        return self.gamma

    def compute(self, logps: PairLogps, progress: float = 0.0) -> LossOutput:
        chosen_avg = length_average(logps.chosen, logps.chosen_tokens)
        rejected_avg = length_average(logps.rejected, logps.rejected_tokens)
        z = self.beta * (chosen_avg - rejected_avg) - self.gamma_at(progress)
        losses = smoothed_sigmoid_loss(z, self.label_smoothing)
        metrics = {}
        if self.sft_weight > 0:
            sft = -chosen_avg
            losses = losses + self.sft_weight * sft
            metrics["sft_loss"] = sft.detach().mean()
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_avg).detach(),
            rejected_rewards=(self.beta * rejected_avg).detach(),
            metrics=metrics,
        )
