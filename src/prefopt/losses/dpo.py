"""DPO (Rafailov et al., 2023): logistic loss on the policy-vs-reference log-ratio margin.

h = (s_w - ref_w) - (s_l - ref_l); loss = -(1-ε)·logσ(βh) - ε·logσ(-βh); reward = β(s - ref).
Exercised by: `.venv/bin/python -m pytest tests/losses/test_loss_dpo_ipo.py -q`.
"""

from __future__ import annotations

import math

from prefopt.losses.base import LossOutput, PairLogps, PreferenceLoss, check, smoothed_sigmoid_loss


class DPOLoss(PreferenceLoss):
    """Direct Preference Optimization with optional label smoothing (conservative DPO)."""

    name = "dpo"
    needs_reference = True
    # β 0.01-1: the DPO paper trains with 0.1 (0.05-0.5 in its ablations), TRL's default is 0.1, Zephyr
    # used 0.01; this project's sort study found 1.0 best (conf/tuned/dpo_sort.yaml).
    beta_range = (0.01, 1.0)
    stall_loss = math.log(2)  # -log σ(0), also with label smoothing: the loss while policy == reference

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0) -> None:
        check("DPOLoss", "beta", beta, lambda v: v > 0, "a number > 0")
        check("DPOLoss", "label_smoothing", label_smoothing, lambda v: 0 <= v < 0.5, "in [0, 0.5)")
        self.beta = float(beta)
        self.label_smoothing = float(label_smoothing)

    def compute(self, logps: PairLogps, progress: float = 0.0) -> LossOutput:
        # Reference log-probs are constants: never let a gradient reach them.
        chosen_ratio = logps.chosen - logps.ref_chosen.detach()
        rejected_ratio = logps.rejected - logps.ref_rejected.detach()
        losses = smoothed_sigmoid_loss(self.beta * (chosen_ratio - rejected_ratio), self.label_smoothing)
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_ratio).detach(),
            rejected_rewards=(self.beta * rejected_ratio).detach(),
        )
