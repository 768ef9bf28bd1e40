"""Controls that keep an RMiPO claim honest: does the PMI *pairing* matter, or only the margin values?

- `SimPOAnnealedLoss`: SimPO whose margin ratio moves linearly from `gamma_beta_ratio` (start of
  training) to `gamma_beta_ratio_end` (end), e.g. 1.6 -> 0.3, RMiPO's margin range as a schedule:
  γ(p) = β·(r_start + (r_end - r_start)·p), p = share of training done.
- `RMiPOShuffledLoss`: RMiPO with δ permuted at random within each batch before the margin is
  computed, so the margins have the same distribution as RMiPO's but no longer belong to their pair.

SimPO with a fixed ratio of 0.3 or 1.6 (RMiPO's margin bounds) needs no class: conf/loss/
simpo_margin_low.yaml and simpo_margin_high.yaml set `gamma_beta_ratio`. The configs of all four
controls are in conf/loss/ and `python src/run.py -m sweep=controls` sweeps them.
Exercised by: `.venv/bin/python -m pytest tests/losses/test_loss_controls.py -q`.
"""

from __future__ import annotations

import torch

from prefopt.losses.base import LossOutput, PairLogps, check
from prefopt.losses.rmipo import RMiPOLoss
from prefopt.losses.simpo import SimPOLoss


class SimPOAnnealedLoss(SimPOLoss):
    """SimPO with the margin ratio annealed linearly from `gamma_beta_ratio` to `gamma_beta_ratio_end`."""

    name = "simpo_anneal"
    needs_progress = True

    def __init__(
        self,
        beta: float = 2.0,
        gamma_beta_ratio: float = 1.6,
        gamma_beta_ratio_end: float = 0.3,
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
    ) -> None:
        super().__init__(beta, gamma_beta_ratio, label_smoothing, sft_weight)
        check("SimPOAnnealedLoss", "gamma_beta_ratio_end", gamma_beta_ratio_end, lambda v: v >= 0, "a number >= 0")
        self.gamma_beta_ratio_end = float(gamma_beta_ratio_end)

    def gamma_at(self, progress: float) -> float:
        p = min(1.0, max(0.0, float(progress)))
        ratio = self.gamma_beta_ratio + (self.gamma_beta_ratio_end - self.gamma_beta_ratio) * p
        return self.beta * ratio

    def compute(self, logps: PairLogps, progress: float = 0.0) -> LossOutput:
        out = super().compute(logps, progress)
        out.metrics["margin/mean"] = torch.tensor(self.gamma_at(progress) / self.beta)
        return out


class RMiPOShuffledLoss(RMiPOLoss):
    """RMiPO with each batch's δ randomly permuted across pairs (the global torch RNG: seeded runs repeat)."""

    name = "rmipo_shuffled"

    def margin(self, delta: torch.Tensor) -> torch.Tensor:
        perm = torch.randperm(delta.shape[0], device=delta.device)
        return super().margin(delta[perm])
