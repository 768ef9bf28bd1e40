"""Tests of the sort task's prompts, oracle, judge and demonstration mix (prefopt.tasks.sort_oracle)."""

import math
import random
from collections import Counter

import pytest

from prefopt.tasks.sort_oracle import (
    DEMO_MIX, SortOracle, demonstration, is_eval_prompt, judge_pair, judge_reward, make_prompts,
    oracle_reward, preference_probability, prompt_digits, prompt_string,
)


@pytest.mark.parametrize(
    "y, expected",
    [
        ("123", 1.0),  # the sorted answer
        ("132", 1 / 3),  # only position 0 right
        ("321", 1 / 3),  # only the middle right
        ("12", 2 / 3 - 0.5 / 3),  # two right, one missing
        ("1234", 1.0 - 0.5 / 3),  # all right, one extra
        ("", -0.5),
        ("9>9", 0.0),
    ],
)
def test_oracle_by_hand(y, expected):
    assert oracle_reward("312", y) == pytest.approx(expected)


def test_oracle_rejects_empty_prompt():
    with pytest.raises(ValueError, match="no digits"):
        oracle_reward("", "1")


def test_judge_reward_and_probability_by_hand():
    # x="312": "1234" has r* = 5/6 and len 4 -> r~ = 5/6 + 0.3 * 4/3 = 1.2333
    assert judge_reward("312", "1234", bias=0.3) == pytest.approx(5 / 6 + 0.4)
    # "123": r~ = 1 + 0.3 = 1.3; "12": r~ = 0.5 + 0.2 = 0.7 -> sigmoid(0.6 / 0.1)
    assert preference_probability("312", "123", "12", 0.3, 0.1) == pytest.approx(1 / (1 + math.exp(-6)))


def test_judge_bias_prefers_longer_answers():
    x, long, short = "54321", "1234599", "12345"  # r*: 0.8 and 1.0; lengths 7 and 5
    unbiased = preference_probability(x, long, short, bias=0.0, temperature=0.1)
    biased = preference_probability(x, long, short, bias=1.0, temperature=0.1)
    assert unbiased == pytest.approx(1 / (1 + math.exp(2)))  # (0.8 - 1.0) / 0.1 = -2
    assert biased == pytest.approx(1 / (1 + math.exp(-2)))  # (0.8 + 1.4 - 1.0 - 1.0) / 0.1 = 2
    rng = random.Random(0)
    wins = sum(judge_pair(x, long, short, rng, bias=1.0, temperature=0.1)[0] == long for _ in range(4000))
    assert wins / 4000 == pytest.approx(biased, abs=0.03)


def test_judge_pair_drops_ties_and_is_seeded():
    assert judge_pair("312", "12", "12", random.Random(0)) is None
    draws = lambda seed: [judge_pair("312", "123", "1234", random.Random(seed)) for _ in range(5)]
    assert draws(3) == draws(3)


def test_demo_mix_proportions_and_kinds():
    rng = random.Random(0)
    xs = make_prompts(8000, rng)
    demos = [demonstration(x, rng) for x in xs]
    counts = Counter(kind for _, kind in demos)
    for kind, share in DEMO_MIX.items():
        assert counts[kind] / len(demos) == pytest.approx(share, abs=0.02), kind
    for x, (y, kind) in zip(xs, demos):
        answer = "".join(sorted(x))
        if kind == "correct":
            assert y == answer
        elif kind == "unsorted_copy":
            assert y == x
        elif kind == "too_long":
            assert y.startswith(answer) and 1 <= len(y) - len(x) <= 3
        elif kind == "adjacent_swap" and len(set(x)) > 1:
            diff = [i for i in range(len(x)) if y[i] != answer[i]]
            assert len(y) == len(x) and len(diff) == 2 and diff[1] == diff[0] + 1
        elif kind == "substitution":
            assert len(y) == len(x) and y != answer


def test_prompts_distinct_in_range_and_split_by_hash():
    train = make_prompts(500, random.Random(1), 5, 10)
    held = make_prompts(100, random.Random(1), 5, 10, held_out=True)
    assert len(set(train)) == 500 and all(5 <= len(x) <= 10 and x.isdigit() for x in train)
    assert not set(train) & set(held)
    assert all(is_eval_prompt(x) for x in held) and not any(is_eval_prompt(x) for x in train)
    assert make_prompts(50, random.Random(7)) == make_prompts(50, random.Random(7))
    with pytest.raises(ValueError, match="too many"):
        make_prompts(10_000, random.Random(0), 2, 2)


def test_oracle_callable_parses_prompt_strings():
    assert prompt_string("312") == "312>" and prompt_digits("312>") == "312"
    assert SortOracle()(["312>", "54>"], ["123", "45"]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        SortOracle()(["1>", "2>"], ["1"])
