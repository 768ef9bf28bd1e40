"""ORPO (Hong, Lee & Thorne, 2024, "ORPO: Monolithic Preference Optimization without Reference Model"):
an SFT loss on the chosen response plus a log odds-ratio penalty, no reference model.

With s̄ = s/n the length-averaged log-prob, p = exp(s̄) and odds(y) = p/(1-p):
    log odds = (s̄_w - s̄_l) - (log(1 - exp(s̄_w)) - log(1 - exp(s̄_l)));
    loss = -s̄_w - λ·logσ(log odds)            (λ is `beta`, as TRL names it); reward = λ·s̄.
The paper's Eq. 6-7 (L = L_SFT + λ·L_OR, L_OR = -logσ(log odds_w/odds_l)), checked against TRL 1.16's
`trl.experimental.orpo.ORPOTrainer.odds_ratio_loss` (same log odds, same stable log(1 - exp(x)), same
reward λ·s̄): tests/test_trl_parity_new_losses.py. Default λ = 0.1: the paper's setting and TRL's
`ORPOConfig.beta`.
One difference from TRL, on purpose: the SFT term here is per pair, the chosen response's
length-averaged NLL -s̄_w over its response tokens; TRL's ORPOTrainer takes one token-mean
cross-entropy over the whole batch and includes the prompt tokens ("computed over the full prompt and
response"). `PairLogps` carries response log-probs only, so the prompt's NLL is not available here.
A length-averaged log-prob at or above 0 (p = 1, e.g. a 0-token response) has infinite odds: s̄ is
capped at -1e-6 for the odds term, where log(1 - p) ≈ -13.8.
Exercised by: `.venv/bin/python -m pytest tests/losses/test_loss_orpo.py -q`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prefopt.losses.base import LossOutput, PairLogps, PreferenceLoss, check, length_average

MAX_AVG_LOGP = -1e-6  # cap on s̄ in the odds term: p = 1 would make log(1 - p) = -inf


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2 (Mächler 2012; TRL uses the same split)."""
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


class ORPOLoss(PreferenceLoss):
    """Odds Ratio Preference Optimization: chosen NLL + λ·(-logσ(log odds ratio)), reference-free."""

    name = "orpo"
    # λ 0.05-1: the paper trains with 0.1 and compares 0.1, 0.5 and 1.0 in its λ ablation; TRL's
    # ORPOConfig.beta defaults to 0.1.
    beta_range = (0.05, 1.0)
    stall_loss = None  # the NLL term moves the loss's starting value with the data: no fixed value

    def __init__(self, beta: float = 0.1) -> None:
        check("ORPOLoss", "beta", beta, lambda v: v > 0, "a number > 0")
        self.beta = float(beta)

    def compute(self, logps: PairLogps, progress: float = 0.0) -> LossOutput:
        chosen_avg = length_average(logps.chosen, logps.chosen_tokens)
        rejected_avg = length_average(logps.rejected, logps.rejected_tokens)
        w, l = chosen_avg.clamp(max=MAX_AVG_LOGP), rejected_avg.clamp(max=MAX_AVG_LOGP)
        log_odds = (w - l) - (log1mexp(w) - log1mexp(l))
        log_ratio = F.logsigmoid(log_odds)
        nll = -chosen_avg
        losses = nll - self.beta * log_ratio
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_avg).detach(),
            rejected_rewards=(self.beta * rejected_avg).detach(),
            metrics={
                "nll_loss": nll.detach().mean(),
                "log_odds_ratio": log_ratio.detach().mean(),  # TRL's names: mean logσ(log odds)
                "log_odds_chosen": log_odds.detach().mean(),  # and mean log odds
            },
        )
