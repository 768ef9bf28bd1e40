"""The length-controlled win rate (prefopt/eval/lc_win_rate.py): a hand-worked case the fit reproduces
exactly, a judge that prefers length alone (raw win rate near 1, LC near 0.5), and the edge cases."""

import math

import numpy as np
import pytest

from prefopt.eval.lc_win_rate import fit_logistic, lc_win_rate, length_feature, outcomes


def test_outcomes_count_ties_half_and_lengths_are_normalised():
    assert outcomes([2, 1, 1], [1, 2, 1]).tolist() == [1.0, 0.0, 0.5]
    # Δ = (2, -2): sd 2, x = tanh(±1)
    assert length_feature([5, 1], [3, 3]).tolist() == pytest.approx([math.tanh(1), -math.tanh(1)])
    assert length_feature([4, 5], [1, 2]).tolist() == [0.0, 0.0]  # the same Δ everywhere: no length signal


def test_hand_worked_two_groups():
    """Longer answers (Δ = +3) win 4 of 5, shorter ones (Δ = -3) win 1 of 2. Two distinct x = ±c, so the
    two-parameter fit reproduces both groups' rates: a + bc = logit(0.8) = ln 4, a - bc = logit(0.5) = 0,
    hence a = ln 2 and the LC win rate is σ(ln 2) = 2/3; the raw win rate is 5/7."""
    scores = [1, 1, 1, 1, 0, 1, 0]
    start = [0, 0, 0, 0, 1, 0, 1]
    lengths = [6, 6, 6, 6, 6, 0, 0]
    start_lengths = [3] * 7
    raw = sum(s > t for s, t in zip(scores, start)) / 7
    assert raw == pytest.approx(5 / 7)
    assert lc_win_rate(scores, start, lengths, start_lengths) == pytest.approx(2 / 3, abs=1e-3)
    a, b = fit_logistic(length_feature(lengths, start_lengths), outcomes(scores, start), ridge=0.0)
    assert a == pytest.approx(math.log(2), abs=1e-9) and b > 0


def test_a_judge_that_only_likes_length_gives_about_half():
    """The policy writes longer answers than its start 9 times in 10, and the judge prefers the longer of
    the two with probability σ(4·x) and nothing else: the raw win rate is near 0.9, the LC win rate
    near 0.5 (the judge has no preference at equal length)."""
    rng = np.random.default_rng(0)
    n = 4000
    start_lengths = rng.integers(20, 60, n)
    delta = np.where(rng.random(n) < 0.9, rng.integers(5, 40, n), -rng.integers(5, 40, n))
    lengths = start_lengths + delta
    x = length_feature(lengths, start_lengths)
    wins = rng.random(n) < 1 / (1 + np.exp(-4 * x))
    scores, start = wins.astype(float), (~wins).astype(float)
    raw = wins.mean()
    lc = lc_win_rate(scores, start, lengths, start_lengths)
    assert raw > 0.8 and abs(lc - 0.5) < 0.05


def test_a_policy_better_at_equal_length_keeps_its_edge():
    """Equal lengths everywhere: nothing to control for, the LC win rate is the raw one."""
    scores, start = [1, 1, 1, 0], [0, 0, 0, 1]
    assert lc_win_rate(scores, start, [5] * 4, [5] * 4) == pytest.approx(0.75, abs=1e-6)


def test_perfect_separation_by_length_stays_finite_and_centred():
    """Every longer answer wins, every shorter one loses (the length explains it all): the unregularised
    fit has no finite optimum; the ridge on the slope keeps it finite with the intercept at 0."""
    scores, start = [1, 1, 0, 0], [0, 0, 1, 1]
    lc = lc_win_rate(scores, start, [9, 8, 1, 2], [5] * 4)
    assert lc == pytest.approx(0.5, abs=1e-6)


def test_all_wins_or_all_ties_need_no_fit_and_mismatched_inputs_are_refused():
    assert lc_win_rate([2, 3], [1, 1], [9, 1], [1, 9]) == 1.0
    assert lc_win_rate([1, 1], [1, 1], [9, 1], [1, 9]) == 0.5
    with pytest.raises(ValueError, match="same, non-zero number"):
        lc_win_rate([1], [1, 2], [1], [1])
