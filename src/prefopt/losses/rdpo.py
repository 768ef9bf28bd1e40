"""R-DPO (Park, Rafailov, Ermon & Finn, 2024, "Disentangling Length from Quality in Direct Preference
Optimization"): DPO with a length regulariser in the Bradley-Terry logit.

h = (s_w - ref_w) - (s_l - ref_l); z = β·h + α·(n_w - n_l);  loss = -logσ(z);  reward = β(s - ref).
(n = response tokens, the paper's |y|.) Where the sign comes from: the paper regularises the RLHF
objective with a length penalty, max E[r(x, y) - α|y|] - β·KL, whose optimum gives
r(x, y) = β·log π(y|x)/π_ref(y|x) + α|y| + const, and the Bradley-Terry model on r gives the
+α(|y_w| - |y_l|) above. A longer chosen
response thus already "explains" part of the preference, and the gradient weight σ(-z) goes to the
pairs where the shorter response won: the regulariser works against length exploitation. (Issue 29's
brief wrote -α(|y_w| - |y_l|); that sign would reward length, so the paper's is used.)
TRL 1.16 has no R-DPO (DPOConfig.ld_alpha is LD-DPO, a different method), so the test checks this
file against the paper's formula written out independently, and α = 0 against TRL's DPOTrainer
(loss_type="sigmoid"): tests/test_trl_parity_new_losses.py.
Defaults: β = 0.1 (DPO's), α = 0.2 (issue 29's value; the SimPO paper's R-DPO baseline grid, as
recalled and not re-checked here, spans α 0.05-1.0). α multiplies a token count, so its scale
depends on the data's length differences: with responses hundreds of tokens apart, small values.
Exercised by: `.venv/bin/python -m pytest tests/losses/test_loss_rdpo.py -q`.
"""

from __future__ import annotations

import math

from prefopt.losses.base import LossOutput, PairLogps, PreferenceLoss, check, smoothed_sigmoid_loss


class RDPOLoss(PreferenceLoss):
    """Length-regularised DPO: the logit gets α·(n_w - n_l) added. Needs the reference policy."""

    name = "rdpo"
    needs_reference = True
    # β 0.01-1: DPO's usual range (DPOLoss.beta_range); R-DPO's β is DPO's β, on the same summed log-ratios.
    beta_range = (0.01, 1.0)
    stall_loss = None  # with α = 0 (plain DPO) the instance sets log 2; otherwise the start depends on lengths

    def __init__(self, beta: float = 0.1, alpha: float = 0.2) -> None:
        check("RDPOLoss", "beta", beta, lambda v: v > 0, "a number > 0")
        check("RDPOLoss", "alpha", alpha, lambda v: v >= 0, "a number >= 0")
        self.beta = float(beta)
        self.alpha = float(alpha)
        if self.alpha == 0:
            self.stall_loss = math.log(2)  # plain DPO: -log σ(0) while policy == reference

    def compute(self, logps: PairLogps, progress: float = 0.0) -> LossOutput:
        # Reference log-probs are constants: never let a gradient reach them.
        chosen_ratio = logps.chosen - logps.ref_chosen.detach()
        rejected_ratio = logps.rejected - logps.ref_rejected.detach()
        length_term = self.alpha * (logps.chosen_tokens - logps.rejected_tokens).to(chosen_ratio.dtype)
        losses = smoothed_sigmoid_loss(self.beta * (chosen_ratio - rejected_ratio) + length_term, 0.0)
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_ratio).detach(),
            rejected_rewards=(self.beta * rejected_ratio).detach(),
            metrics={"length/term": length_term.detach().mean()},  # mean α(n_w - n_l) added to the logit
        )
