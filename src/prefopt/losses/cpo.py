"""CPO (Xu et al., 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance
in Machine Translation"): DPO's logistic loss with a uniform reference (reference-free) plus an NLL
term on the chosen response.

loss = -(1-ε)·logσ(β(s_w - s_l)) - ε·logσ(-β(s_w - s_l)) + cpo_alpha·(-s̄_w);  reward = β·s.
(s summed log-probs, s̄ = s/n; the paper's Eq. 3 is the ε = 0, cpo_alpha = 1 case: L_prefer + L_NLL.)
Checked against TRL 1.16's `trl.experimental.cpo.CPOTrainer` (loss_type="sigmoid", its `cpo_loss` on
summed log-probs, `loss = losses.mean() + cpo_alpha·nll`): tests/test_trl_parity_new_losses.py.
Defaults are TRL's CPOConfig and the paper's: β = 0.1, cpo_alpha = 1.0.
The NLL term here is per pair, the chosen response's length-averaged NLL -s̄_w; TRL takes one
token-mean cross-entropy over all chosen response tokens of the batch. The two are equal when the
batch's chosen responses have one length, and differ by the weighting of pairs otherwise.
TRL's other CPOTrainer variants: loss_type="simpo" with cpo_alpha > 0 (CPO-SimPO) is
`SimPOLoss(sft_weight=cpo_alpha)`, checked in the same test file; AlphaPO (`CPOConfig.alpha`) is not
implemented here.
Exercised by: `.venv/bin/python -m pytest tests/losses/test_loss_cpo.py -q`.
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


class CPOLoss(PreferenceLoss):
    """Contrastive Preference Optimization: reference-free sigmoid loss on summed log-probs + chosen NLL."""

    name = "cpo"
    # β 0.01-1: the paper (ALMA-R) and TRL's CPOConfig use 0.1, the range TRL's docs give is 0.1-0.5;
    # the low end matches DPO's (summed log-probs, the same scale).
    beta_range = (0.01, 1.0)
    stall_loss = None  # with cpo_alpha = 0 the instance sets log 2 (-log σ(0) as β -> 0)

    def __init__(self, beta: float = 0.1, cpo_alpha: float = 1.0, label_smoothing: float = 0.0) -> None:
        check("CPOLoss", "beta", beta, lambda v: v > 0, "a number > 0")
        check("CPOLoss", "cpo_alpha", cpo_alpha, lambda v: v >= 0, "a number >= 0")
        check("CPOLoss", "label_smoothing", label_smoothing, lambda v: 0 <= v < 0.5, "in [0, 0.5)")
        self.beta = float(beta)
        self.cpo_alpha = float(cpo_alpha)
        self.label_smoothing = float(label_smoothing)
        if self.cpo_alpha == 0:
            self.stall_loss = math.log(2)  # no NLL term: the plain sigmoid loss's starting value

    def compute(self, logps: PairLogps, progress: float = 0.0) -> LossOutput:
        losses = smoothed_sigmoid_loss(self.beta * (logps.chosen - logps.rejected), self.label_smoothing)
        metrics = {}
        if self.cpo_alpha > 0:
            nll = -length_average(logps.chosen, logps.chosen_tokens)
            losses = losses + self.cpo_alpha * nll
            metrics["nll_loss"] = nll.detach().mean()
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * logps.chosen).detach(),
            rejected_rewards=(self.beta * logps.rejected).detach(),
            metrics=metrics,
        )
