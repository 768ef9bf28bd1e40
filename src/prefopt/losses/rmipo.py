"""RMiPO: a SimPO-style loss whose margin shrinks as the pair's PMI gap grows (adaptive margin).

PMI(y) = s̄(y|x) - m̄(y), with m̄ the length-averaged marginal log-prob of y with no prompt;
δ = stopgrad(PMI_w - PMI_l); g = g_min + (g_max - g_min)·exp(-max(0, δ));
loss = -(1-ε)·logσ(β(s̄_w - s̄_l - g)) - ε·logσ(-β(s̄_w - s̄_l - g)); reward = β·s̄.
No gradient flows through δ, g or the marginal log-probs.

What m̄ conditions on (`marginal_context`, read by the data side to build the marginal rows):
- "none" (the default): the response alone, its first token as context, the n-1 tokens after it
  scored, m̄ = their sum / (n-1). This is the reference code's estimator (liavonpenn/rmipo,
  scripts/rmipo_trainer.py, `concatenated_forward` / `get_batch_logps` on the response with no
  start token), the one the paper's results come from.
- "start_token": the model's start token (BOS, else EOS) plus the task's "no prompt" marker
  (a data source's `no_prompt_marker`, prefopt.scoring.marginal), then all n response tokens scored. This project's estimator
  before issue 29 (the committed studies and conf/tuned/rmipo_*.yaml were measured with it).
A response with no scored marginal token (one token under "none") has no evidence for a PMI: its
m̄ is defined as its conditional average s̄(y|x), so its PMI is 0 (never 0/0 and a NaN batch, as in
the reference code).
Exercised by: `.venv/bin/python -m pytest tests/losses/test_loss_rmipo.py -q`.
"""

from __future__ import annotations

import math

import torch

from prefopt.losses.base import (
    ConfigError,
    LossOutput,
    PairLogps,
    PreferenceLoss,
    check,
    length_average,
    smoothed_sigmoid_loss,
)

MARGINAL_SOURCES = ("policy", "reference")
MARGINAL_CONTEXTS = ("none", "start_token")


class RMiPOLoss(PreferenceLoss):
    """RMiPO. `marginal` picks the model whose prompt-free log-probs give m̄: "policy" (the live
    policy, the paper's behaviour) or "reference" (the frozen starting policy, cacheable).
    `marginal_context` what the response is conditioned on there: "none" (the reference code's: the
    response alone, first token as context, n-1 tokens scored) or "start_token" (start token + the
    task's marker, all n tokens scored); see the module docstring."""

    name = "rmipo"
    needs_marginal = True
    # β 0.2-20: a decade either side of the reference code's 2.0 (SimPO's scale of length-averaged
    # log-probs); this project's studies found 0.6 (sort) and 6 (IMDb) best (conf/tuned/rmipo_*.yaml).
    beta_range = (0.2, 20.0)
    stall_loss = math.log(2)  # -log σ(0): where the loss sits when β(s̄_w - s̄_l - g) stays at 0 (β -> 0)

    def __init__(
        self,
        beta: float = 2.0,
        gamma_min: float = 0.3,
        gamma_max: float = 1.6,
        label_smoothing: float = 0.0,
        marginal: str = "policy",
        marginal_context: str = "none",
    ) -> None:
        check("RMiPOLoss", "beta", beta, lambda v: v > 0, "a number > 0")
        check("RMiPOLoss", "gamma_min", gamma_min, lambda v: True, "a finite number")
        check("RMiPOLoss", "gamma_max", gamma_max, lambda v: v >= gamma_min,
              f"a finite number >= gamma_min ({gamma_min!r})")  # fmt: skip
        check("RMiPOLoss", "label_smoothing", label_smoothing, lambda v: 0 <= v < 0.5, "in [0, 0.5)")
        if marginal not in MARGINAL_SOURCES:
            allowed = list(MARGINAL_SOURCES)
            raise ConfigError(
                f"RMiPOLoss: marginal={marginal!r} is not allowed; marginal must be one of {allowed}"
            )
        if marginal_context not in MARGINAL_CONTEXTS:
            allowed = list(MARGINAL_CONTEXTS)
            raise ConfigError(f"RMiPOLoss: marginal_context={marginal_context!r} is not allowed; "
                              f"marginal_context must be one of {allowed}")
        self.beta = float(beta)
        self.gamma_min = float(gamma_min)
        self.gamma_max = float(gamma_max)
        self.label_smoothing = float(label_smoothing)
        self.marginal = marginal
        self.marginal_source = marginal
        self.marginal_context = marginal_context  # the data side builds the marginal rows from it

    def margin(self, delta: torch.Tensor) -> torch.Tensor:
        """g = g_min + (g_max - g_min)·exp(-max(0, δ)): g_max for δ <= 0, tending to g_min as δ grows."""
        return self.gamma_min + (self.gamma_max - self.gamma_min) * torch.exp(-delta.clamp(min=0))

    def compute(self, logps: PairLogps, progress: float = 0.0) -> LossOutput:
        chosen_avg = length_average(logps.chosen, logps.chosen_tokens)
        rejected_avg = length_average(logps.rejected, logps.rejected_tokens)
        # The marginal pass scores the same response tokens; fall back to those counts if not given.
        m_chosen_n = _first_set(logps.marginal_chosen_tokens, logps.chosen_tokens)
        m_rejected_n = _first_set(logps.marginal_rejected_tokens, logps.rejected_tokens)
        # no marginal token scored (a one-token response, marginal_context=none): PMI 0 (m̄ := s̄)
        m_chosen = _marginal_average(logps.marginal_chosen, m_chosen_n, chosen_avg)
        m_rejected = _marginal_average(logps.marginal_rejected, m_rejected_n, rejected_avg)
        pmi_chosen = (chosen_avg - m_chosen).detach()
        pmi_rejected = (rejected_avg - m_rejected).detach()
        delta = pmi_chosen - pmi_rejected
        margin = self.margin(delta)
        losses = smoothed_sigmoid_loss(
            self.beta * (chosen_avg - rejected_avg - margin), self.label_smoothing
        )
        at_max = (margin - self.gamma_max).abs() <= 1e-6
        metrics = {
            "pmi/chosen": pmi_chosen.mean(),
            "pmi/rejected": pmi_rejected.mean(),
            "pmi/delta": delta.mean(),
            "margin/mean": margin.mean(),
            "margin/at_max": at_max.float().mean(),
        }
        return LossOutput(
            losses=losses,
            chosen_rewards=(self.beta * chosen_avg).detach(),
            rejected_rewards=(self.beta * rejected_avg).detach(),
            metrics=metrics,
        )


def _marginal_average(summed: torch.Tensor, n_tokens: torch.Tensor, conditional_avg: torch.Tensor
                      ) -> torch.Tensor:
    """m̄ = summed / n; where no marginal token was scored (n = 0: a one-token response under
    marginal_context=none), the conditional average instead, so that response's PMI is 0."""
    return torch.where(n_tokens > 0, length_average(summed, n_tokens), conditional_avg.detach())


def _first_set(value: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    return fallback if value is None else value
