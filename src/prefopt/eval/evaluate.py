"""The generation evaluation: oracle reward, win rate and KL of a trained policy against its start.

Both policies answer the held-out prompts (same seed); the task's oracle scores every answer; the win
rate compares the two answers prompt by prompt; the KL is the Monte-Carlo estimate over the policy's
own samples. The starting policy's answers and rewards (`start_side`) can come from a cache shared by
a sweep (prefopt.eval.cache). `evaluate_answers` also returns both policies' answers (`Answers`), which
a second judge scores (prefopt.eval.judged); `policy_answers` and `start_answers` sample them for data
with no oracle. `prefopt.run.steps` calls them at the end of a run; exercised by
`pytest tests/test_eval.py tests/test_judge.py`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from prefopt.eval.generation import sample
from prefopt.scoring.logps import response_logps


def win_rate(policy_rewards: Sequence[float], reference_rewards: Sequence[float]) -> float:
    """Share of prompts where the policy's answer beats the reference's; a tie counts half."""
    if len(policy_rewards) != len(reference_rewards) or not policy_rewards:
        raise ValueError("need the same, non-zero number of policy and reference rewards")
    score = sum(1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(policy_rewards, reference_rewards))
    return score / len(policy_rewards)


def kl_estimate(policy_logps: Sequence[float], reference_logps: Sequence[float]) -> float:
    """KL(pi || pi_ref) ~ mean over y ~ pi of log pi(y|x) - log pi_ref(y|x) (summed over tokens)."""
    if len(policy_logps) != len(reference_logps) or not policy_logps:
        raise ValueError("need the same, non-zero number of policy and reference log-probs")
    return sum(p - r for p, r in zip(policy_logps, reference_logps)) / len(policy_logps)


@torch.no_grad()
def sequence_logps(
    model, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, batch_size: int = 64
) -> list[float]:
    """Summed log pi(response | prompt) per row, via prefopt.scoring.logps.response_logps."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        for start in range(0, len(prompt_ids), batch_size):
            rows = list(zip(prompt_ids[start: start + batch_size], response_ids[start: start + batch_size]))
            width = max(len(p) + len(r) for p, r in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            score = torch.zeros_like(ids)
            for i, (p, r) in enumerate(rows):
                ids[i, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
                mask[i, : len(p) + len(r)] = 1
                score[i, len(p): len(p) + len(r)] = 1
            logps, _ = response_logps(model, ids.to(device), mask.to(device), score.to(device))
            out.extend(logps.tolist())
    finally:
        model.train(was_training)
    return out


def start_answers(reference, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                  seed: int = 0, batch_size: int = 64, reference_context: Callable[[], Any] | None = None
                  ) -> dict[str, list]:
    """The starting policy's seeded samples on the prompts (`ids`) and their text (JSON-able)."""
    with (reference_context or nullcontext)():
        theirs = sample(
            reference, tokenizer, prompt_ids, max_new_tokens, temperature, seed, batch_size, "eval: reference"
        )
    texts = tokenizer.batch_decode(theirs, skip_special_tokens=True)
    return {"ids": [list(map(int, r)) for r in theirs], "texts": texts}


def start_side(
    reference,
    tokenizer,
    prompts: list[str],
    oracle: Callable[[list[str], list[str]], list[float]],
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    reference_context: Callable[[], Any] | None = None,
) -> dict[str, list]:
    """The starting policy's part of the evaluation, which no training changes: its seeded samples on
    `prompts` (`ids`), their text and their oracle rewards. JSON-able, so a sweep can cache it."""
    side = start_answers(reference, tokenizer, tokenizer(list(prompts))["input_ids"], max_new_tokens, temperature,
                         seed, batch_size, reference_context)
    return {**side, "rewards": [float(r) for r in oracle(list(prompts), side["texts"])]}


@dataclass
class Answers:
    """Both policies' answers to the same prompts, sampled with the same seed: what a judge scores.
    `prompts` as the judge reads them (strings or chat messages); `logps` / `ref_logps`: the summed
    log-probs of the policy's answers under the policy and under the starting policy (the KL);
    `lengths`: response tokens, EOS excluded. The start's side is filled when it was sampled."""

    prompts: list[Any]
    prompt_ids: list[list[int]]
    ids: list[list[int]]
    texts: list[str]
    logps: list[float]
    ref_logps: list[float]
    lengths: list[int]
    eos_id: int | None = None
    start_ids: list[list[int]] | None = None
    start_texts: list[str] | None = None

    @property
    def kl(self) -> float:
        return kl_estimate(self.logps, self.ref_logps)


def response_lengths(ids: list[list[int]], eos_id: int | None) -> list[int]:
    """Tokens of each response, a final EOS not counted."""
    return [len(r) - (1 if r and r[-1] == eos_id else 0) for r in ids]


def policy_answers(policy, reference, tokenizer, prompts: list[Any], prompt_ids: list[list[int]], max_new_tokens: int,
                   temperature: float = 1.0, seed: int = 0, batch_size: int = 64,
                   reference_context: Callable[[], Any] | None = None) -> Answers:
    """The policy's seeded samples on the prompts, their text, and their log-probs under both policies."""
    if not prompts:
        raise ValueError("no evaluation prompts")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ours = sample(policy, tokenizer, prompt_ids, max_new_tokens, temperature, seed, batch_size, "eval: policy")
    texts = tokenizer.batch_decode(ours, skip_special_tokens=True)
    pi = sequence_logps(policy, prompt_ids, ours, pad_id, batch_size)
    with (reference_context or nullcontext)():
        pi_ref = sequence_logps(reference, prompt_ids, ours, pad_id, batch_size)
    eos = tokenizer.eos_token_id
    return Answers(list(prompts), prompt_ids, ours, texts, pi, pi_ref, response_lengths(ours, eos), eos)


def evaluate(
    policy,
    reference,
    tokenizer,
    prompts: list[str],
    oracle: Callable[[list[str], list[str]], list[float]],
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    n_samples: int = 5,
    reference_context: Callable[[], Any] | None = None,
    start: dict[str, list] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Sample both policies on `prompts` and score them. Returns (metrics, a few samples).

    metrics: eval/oracle_reward (policy), eval/oracle_reward_start (reference), eval/win_rate,
    eval/kl (exact in expectation at temperature 1; at other temperatures it scores the tempered
    samples under the untempered models), eval/length (mean response tokens, EOS excluded).
    Both models sample with the same seed, so a policy identical to the reference gives win rate 0.5
    and KL 0. samples: the first `n_samples` {prompt, response, reference_response, reward}.
    `reference_context`: entered around every use of `reference` (a LoRA policy is its own reference
    inside `disable_adapter`), so no second model is needed. `start`: the reference's `start_side`
    computed before (a cache hit); `reference` then only scores the policy's samples (the KL).
    `evaluate_answers` returns the `Answers` too, for a second judge to score (prefopt.eval.judged).
    """
    metrics, samples, _ = evaluate_answers(policy, reference, tokenizer, prompts, oracle, max_new_tokens,
                                           temperature, seed, batch_size, n_samples, reference_context, start)
    return metrics, samples


def evaluate_answers(policy, reference, tokenizer, prompts: list[str],
                     oracle: Callable[[list[str], list[str]], list[float]], max_new_tokens: int,
                     temperature: float = 1.0, seed: int = 0, batch_size: int = 64, n_samples: int = 5, reference_context: Callable[[], Any] | None = None,
                     start: dict[str, list] | None = None) -> tuple[dict[str, float], list[dict[str, Any]], Answers]:
    """`evaluate`, returning also both policies' answers."""
    if not prompts:
        raise ValueError("no evaluation prompts")
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    answers = policy_answers(policy, reference, tokenizer, prompts, prompt_ids, max_new_tokens, temperature, seed,
                             batch_size, reference_context)
    if start is None:
        start = start_side(reference, tokenizer, prompts, oracle, max_new_tokens, temperature, seed, batch_size,
                           reference_context)
    answers.start_ids, answers.start_texts = start.get("ids"), start.get("texts")
    ref_texts, ref_rewards = start["texts"], start["rewards"]
    rewards = [float(r) for r in oracle(list(prompts), answers.texts)]
    samples = [
        {"prompt": p, "response": t, "reference_response": rt, "reward": r}
        for p, t, rt, r in list(zip(prompts, answers.texts, ref_texts, rewards))[:n_samples]
    ]
    return _metrics(rewards, ref_rewards, answers.logps, answers.ref_logps, answers.lengths), samples, answers


def _metrics(rewards: list[float], ref_rewards: list[float], pi, pi_ref, lengths: list[int]) -> dict[str, float]:
    """The eval/* metrics of `evaluate` from the rewards, sequence log-probs and response lengths."""
    return {
        "eval/oracle_reward": sum(rewards) / len(rewards),
        "eval/oracle_reward_start": sum(ref_rewards) / len(ref_rewards),
        "eval/win_rate": win_rate(rewards, ref_rewards),
        "eval/kl": kl_estimate(pi, pi_ref),
        "eval/length": sum(lengths) / len(lengths),
    }
