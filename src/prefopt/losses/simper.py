"""SimPER (Xiao et al., 2025, "SimPER: A Minimalist Approach to Preference Alignment without
Hyperparameters"): minimise the chosen response's perplexity and maximise the rejected one's.

With s̄ = s/n the length-averaged log-prob, exp(s̄) = 1/perplexity:
    loss = -exp(s̄_w) + exp(s̄_l);  reward = s̄.
No hyperparameter and no reference model. Checked against the `loss_type == "simper"` branch of
`SimPOTrainer.simpo_loss` in RMiPO's reference code (liavonpenn/rmipo, scripts/rmipo_trainer.py:
the same loss on length-averaged log-probs, rewards s̄ without a β): tests/test_trl_parity_new_losses.py,
which also checks that s̄ equals the length-averaged log-probs TRL's CPOTrainer computes on the same
batch. TRL 1.16 has no SimPER.
The loss lies in (-1, 1) and starts wherever the starting policy's perplexities put it: no stall value.
No `beta`: a `loss.beta` override is an unknown key, and `beta_range` is None (no β advice).
Exercised by: `.venv/bin/python -m pytest tests/losses/test_loss_simper.py -q`.
"""

from __future__ import annotations

import torch

from prefopt.losses.base import LossOutput, PairLogps, PreferenceLoss, length_average


class SimPERLoss(PreferenceLoss):
    """Simple alignment with Perplexity optimization: -exp(s̄_w) + exp(s̄_l), hyperparameter-free."""

    name = "simper"
    beta_range = None  # SimPER has no β (the paper's point): nothing to advise
    stall_loss = None  # its starting value depends on the policy's perplexities, not on a zero logit

    def __init__(self) -> None:
        """No arguments: any config key besides `_target_` is an unknown key."""

    def compute(self, logps: PairLogps, progress: float = 0.0) -> LossOutput:
        chosen_avg = length_average(logps.chosen, logps.chosen_tokens)
        rejected_avg = length_average(logps.rejected, logps.rejected_tokens)
        chosen_prob, rejected_prob = torch.exp(chosen_avg), torch.exp(rejected_avg)
        return LossOutput(
            losses=-chosen_prob + rejected_prob,
            chosen_rewards=chosen_avg.detach(),
            rejected_rewards=rejected_avg.detach(),
            metrics={
                "probs/chosen": chosen_prob.detach().mean(),  # exp(s̄) = 1 / perplexity
                "probs/rejected": rejected_prob.detach().mean(),
            },
        )
