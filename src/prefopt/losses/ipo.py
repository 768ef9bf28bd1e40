"""IPO (Azar et al., 2023), per-token form: a squared loss pulling the averaged log-ratio gap to 1/(2β).

h̄ = (s_w - ref_w)/n_w - (s_l - ref_l)/n_l; loss = (h̄ - 1/(2β))²; reward = β(s - ref). β plays τ's role.
Exercised by: `.venv/bin/python -m pytest tests/losses/test_loss_dpo_ipo.py -q`.
"""

from __future__ import annotations

from prefopt.losses.base import LossOutput, PairLogps, PreferenceLoss, check, length_average


class IPOLoss(PreferenceLoss):
    """Identity Preference Optimization, length-averaged log-ratios (the form TRL uses)."""

    name = "ipo"
    needs_reference = True
    # τ (β here) 0.01-1: TRL's default 0.1, the range the HF preference-tuning comparison swept (0.01-0.9);
    # this project's studies found 1.0 best (conf/tuned/ipo_*.yaml). No stall_loss: a squared loss
    # starts at (1/(2β))², which depends on β.
    beta_range = (0.01, 1.0)

    def __init__(self, beta: float = 0.1) -> None:
        check("IPOLoss", "beta", beta, lambda v: v > 0, "a number > 0")
        self.beta = float(beta)

    def compute(self, logps: PairLogps, progress: float = 0.0) -> LossOutput:
        # Reference log-probs are constants: never let a gradient reach them.
        chosen_ratio = logps.chosen - logps.ref_chosen.detach()
        rejected_ratio = logps.rejected - logps.ref_rejected.detach()
        gap = length_average(chosen_ratio, logps.chosen_tokens) - length_average(
            rejected_ratio, logps.rejected_tokens
        )
        losses = (gap - 1.0 / (2.0 * self.beta)) ** 2
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_ratio).detach(),
            rejected_rewards=(self.beta * rejected_ratio).detach(),
        )
