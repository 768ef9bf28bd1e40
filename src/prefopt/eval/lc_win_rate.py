"""The length-controlled win rate: the win rate a policy would have if its answers were as long as the
starting policy's.

The idea of AlpacaEval 2 (Dubois, Galambosi, Liang, Hashimoto 2024, "Length-Controlled AlpacaEval: A
Simple Way to Debias Automatic Evaluators", arXiv:2404.04475): fit a logistic regression of each
comparison's outcome on the normalised length difference of the two answers, then read the fitted win
probability at zero difference. With one policy against one baseline, their generalised linear model
reduces to P(win_i) = σ(a + b·x_i), x_i = tanh(Δ_i / sd(Δ)), Δ_i = len(answer_i) − len(start_answer_i),
and the length-controlled win rate is σ(a). (They add an instruction-difficulty term fitted over many
models; with one pair of policies it is absorbed by a.) Ties count half: the outcome y_i is 1, ½ or 0 and
the fit maximises Σ y·log p + (1 − y)·log(1 − p), by Newton's method, with a small ridge on b alone so
that answers whose outcome the length separates perfectly still give a finite, centred fit.

Used by `prefopt.eval.judged` (`eval/judge_lc_win_rate`); exercised by `pytest tests/test_judge_lc.py`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

RIDGE = 1e-3  # on the slope only: finite under perfect separation, ~1e-4 off the exact fit on 7 points
MAX_STEPS = 100


def outcomes(scores: Sequence[float], start_scores: Sequence[float]) -> np.ndarray:
    """1 where the policy's answer scores higher, 0 where lower, ½ for a tie."""
    a, b = np.asarray(scores, dtype=float), np.asarray(start_scores, dtype=float)
    return np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))


def length_feature(lengths: Sequence[float], start_lengths: Sequence[float]) -> np.ndarray:
    """tanh(Δ / sd(Δ)) of the length differences Δ (all zeros when every Δ is the same)."""
    delta = np.asarray(lengths, dtype=float) - np.asarray(start_lengths, dtype=float)
    sd = float(delta.std())
    return np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)


def fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE) -> tuple[float, float]:
    """(a, b) maximising Σ y·log σ(a + b·x) + (1 − y)·log σ(−a − b·x) − ridge·b²/2 (Newton)."""
    design = np.stack([np.ones_like(x), x], axis=1)
    theta = np.zeros(2)
    penalty = np.diag([0.0, ridge])
    for _ in range(MAX_STEPS):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        gradient = design.T @ (y - p) - penalty @ theta
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty
        step = np.linalg.solve(hessian + 1e-12 * np.eye(2), gradient)
        theta = theta + step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def lc_win_rate(scores: Sequence[float], start_scores: Sequence[float], lengths: Sequence[float],
                start_lengths: Sequence[float]) -> float:
    """The length-controlled win rate of the policy's answers over the starting policy's (σ(a) above).
    When every comparison has the same outcome no fit is needed, nor possible: that outcome."""
    if not len(scores) == len(start_scores) == len(lengths) == len(start_lengths) or not len(scores):
        raise ValueError("need the same, non-zero number of scores and lengths on both sides")
    y = outcomes(scores, start_scores)
    if np.all(y == y[0]):
        return float(y[0])
    a, _ = fit_logistic(length_feature(lengths, start_lengths), y)
    return float(1.0 / (1.0 + np.exp(-a)))
