"""The sort task's data generator, gold reward (oracle) and noisy judge: pure Python, no torch.

A prompt is a string of 5-10 digits; the right answer is its digits in ascending order. The oracle
scores a response against that answer; the judge that labels preference pairs adds a bias toward
longer answers, so a policy can over-optimize the judge at the oracle's expense. Every random draw
comes from an explicit `random.Random`, so a seed fixes everything.
Used by `prefopt.tasks.sort.SortTask`; exercised by `pytest tests/tasks/test_sort_oracle.py`.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass

SEPARATOR = ">"  # between the prompt digits and the answer: a prompt string is "31415>"
DIGITS = "0123456789"

# The SFT demonstration mix of the pilot: kind -> share.
DEMO_MIX: dict[str, float] = {
    "correct": 0.40,  # sorted(x)
    "adjacent_swap": 0.20,  # sorted(x) with one adjacent pair of different digits swapped
    "substitution": 0.15,  # sorted(x) with 1..max(1, n//4) positions replaced by other digits
    "unsorted_copy": 0.15,  # x itself
    "too_long": 0.10,  # sorted(x) followed by 1-3 extra random digits
}

EVAL_BUCKETS = 20  # a prompt is held out for evaluation when crc32(digits) % EVAL_BUCKETS == 0


def is_eval_prompt(digits: str) -> bool:
    """Whether a digit string belongs to the held-out evaluation bucket (about 1 in 20 strings).

    A fixed hash split keeps evaluation prompts disjoint from SFT and pair prompts whatever their
    counts, so changing one count never moves a prompt from one set to another.
    """
    return zlib.crc32(digits.encode()) % EVAL_BUCKETS == 0


def make_prompts(
    n: int, rng: random.Random, min_digits: int = 5, max_digits: int = 10, held_out: bool = False
) -> list[str]:
    """`n` distinct digit strings (no separator), length uniform in [min_digits, max_digits].

    held_out=False draws from the training bucket, held_out=True from the evaluation bucket.
    """
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    capacity = sum(10**k for k in range(min_digits, max_digits + 1))
    if n > capacity // (2 * EVAL_BUCKETS):
        raise ValueError(f"{n} distinct prompts of {min_digits}-{max_digits} digits is too many")
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        length = rng.randint(min_digits, max_digits)
        digits = "".join(rng.choice(DIGITS) for _ in range(length))
        if digits in seen or is_eval_prompt(digits) != held_out:
            continue
        seen.add(digits)
        out.append(digits)
    return out


def prompt_string(digits: str) -> str:
    """The prompt as the policy sees it: digits then the separator, "31415" -> "31415>"."""
    return digits + SEPARATOR


def prompt_digits(prompt: str) -> str:
    """Inverse of `prompt_string`: "31415>" -> "31415" (a prompt without separator is kept)."""
    return prompt.split(SEPARATOR, 1)[0]


def oracle_reward(x: str, y: str) -> float:
    """Gold reward r*(x, y) of response y to digit string x.

    With s = sorted(x) and n = len(x):
        r* = #{i < min(n, len(y)) : y[i] == s[i]} / n  -  0.5 * |len(y) - n| / n
    i.e. the share of the n answer positions that y gets right (positions past the end of y count as
    wrong, characters of y past position n are ignored there), minus a length penalty of half a point
    per wrong-length character. The sorted answer scores 1; y="" scores -0.5.
    """
    n = len(x)
    if n == 0:
        raise ValueError("the prompt has no digits")
    target = "".join(sorted(x))
    matches = sum(1 for a, b in zip(y, target) if a == b)
    return matches / n - 0.5 * abs(len(y) - n) / n


def judge_reward(x: str, y: str, bias: float = 0.3) -> float:
    """The noisy judge's score r~ = r* + bias * len(y) / len(x): biased toward longer answers."""
    return oracle_reward(x, y) + bias * len(y) / len(x)


def preference_probability(x: str, a: str, b: str, bias: float = 0.3, temperature: float = 0.1) -> float:
    """P(a preferred to b) = sigmoid((r~_a - r~_b) / temperature)."""
    z = (judge_reward(x, a, bias) - judge_reward(x, b, bias)) / temperature
    return 0.5 * (1.0 + math.tanh(0.5 * z))  # = sigmoid(z), without overflow


def judge_pair(
    x: str, a: str, b: str, rng: random.Random, bias: float = 0.3, temperature: float = 0.1
) -> tuple[str, str] | None:
    """Draw the judge's verdict: (chosen, rejected), or None when a == b (ties are dropped)."""
    if a == b:
        return None
    if rng.random() < preference_probability(x, a, b, bias, temperature):
        return a, b
    return b, a


def demonstration(x: str, rng: random.Random) -> tuple[str, str]:
    """A noisy SFT demonstration for digit string x, drawn from DEMO_MIX: (response, kind)."""
    kind = rng.choices(list(DEMO_MIX), weights=list(DEMO_MIX.values()))[0]
    answer = sorted(x)
    if kind == "adjacent_swap":
        spots = [i for i in range(len(answer) - 1) if answer[i] != answer[i + 1]]
        if spots:
            i = rng.choice(spots)
            answer[i], answer[i + 1] = answer[i + 1], answer[i]
    elif kind == "substitution":
        for i in rng.sample(range(len(answer)), rng.randint(1, max(1, len(answer) // 4))):
            answer[i] = rng.choice(DIGITS.replace(answer[i], ""))
    elif kind == "unsorted_copy":
        answer = list(x)
    elif kind == "too_long":
        answer += [rng.choice(DIGITS) for _ in range(rng.randint(1, 3))]
    return "".join(answer), kind


@dataclass(frozen=True)
class SortOracle:
    """The task's gold reward over strings: prompts like "31415>", responses like "11345".

    A picklable callable (prompts, responses) -> list of r*, the form `prefopt.eval.evaluate` expects.
    """

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [oracle_reward(prompt_digits(p), r) for p, r in zip(prompts, responses)]
