"""Scalar formulas the loss tests work their expected numbers with (imported by tests/losses/test_loss_*.py)."""

import math


def softplus(x):  # -log σ(z) = softplus(-z)
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))
