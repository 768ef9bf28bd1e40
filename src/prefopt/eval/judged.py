"""The judged evaluation: a judge other than the task's oracle (prefopt.eval.judge) scores the trained
policy's and the starting policy's answers to the same held-out prompts, sampled with the same seed.

The answers are the oracle evaluation's where it ran (prefopt.eval.evaluate.evaluate_answers: the same
samples, so eval/length and eval/kl agree); on data with no oracle they are sampled here
(`eval_prompts`: the first `eval.generate_max_prompts` distinct prompts of the eval rows, chat rows through
the policy's chat template as in training, with `eval.generate_max_new_tokens` and
`eval.generate_temperature`). Metrics (`judged_metrics`): eval/judge_reward and eval/judge_reward_start
(mean scores), eval/judge_win_rate (ties count half), eval/judge_lc_win_rate (length-controlled:
prefopt.eval.lc_win_rate), eval/judge_truncated (answers the judge cut to judge.max_length, both sides),
eval/length and eval/length_start (response tokens, EOS excluded), eval/kl. `judgements.jsonl` in the run
folder holds one line per prompt: the prompt, both answers, both scores and both lengths (written whole,
prefopt.store.atomic). The starting policy's scored side is cached per sweep (prefopt.eval.cache).
Called by `prefopt.run.steps.judge_evaluation`; exercised by `pytest tests/test_judge.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from prefopt.data.tokenize import PromptTooLong, encode_row
from prefopt.eval.evaluate import Answers, response_lengths, start_answers, win_rate
from prefopt.eval.judge import Judge, Prompt, score_share
from prefopt.eval.lc_win_rate import lc_win_rate
from prefopt.log import get_logger
from prefopt.store.atomic import write_text_atomic

log = get_logger()

JUDGEMENTS = "judgements.jsonl"


def _cut_prompt(ids: list[int], limit: int, bos: int | None) -> list[int]:
    """The last `limit` ids of a prompt, its leading BOS kept (as training cuts string prompts)."""
    if len(ids) <= limit:
        return ids
    head = ids[:1] if bos is not None and ids[:1] == [bos] and limit > 1 else []
    return head + ids[len(ids) - (limit - len(head)):]


def row_prompts(rows: list[dict], tokenizer: Any, max_prompts: int,
                max_prompt_length: int | None) -> tuple[list[Prompt], list[list[int]]]:
    """(prompts, their ids) of the first `max_prompts` distinct prompts of `rows`, encoded as training
    encodes them; a chat prompt whose role headers alone are too long is left out."""
    seen: set[str] = set()
    prompts: list[Prompt] = []
    ids: list[list[int]] = []
    for row in rows:
        key = json.dumps(row["prompt"], sort_keys=True)
        if key in seen or len(prompts) >= max_prompts:
            continue
        seen.add(key)
        try:
            encoded = encode_row(row, tokenizer, max_prompt_length=max_prompt_length).prompt
        except PromptTooLong:
            continue
        limit = max_prompt_length or len(encoded)
        prompts.append(row["prompt"])
        ids.append(_cut_prompt(encoded, limit, tokenizer.bos_token_id))
    return prompts, ids


def eval_prompts(artifacts: Any, tokenizer: Any, max_prompts: int,
                 max_prompt_length: int | None) -> tuple[list[Prompt], list[list[int]]]:
    """The task's held-out prompts (what the oracle evaluation samples on), else the eval rows'."""
    if artifacts.eval_prompts:
        return list(artifacts.eval_prompts), tokenizer(list(artifacts.eval_prompts))["input_ids"]
    return row_prompts(artifacts.eval_rows, tokenizer, max_prompts, max_prompt_length)


def judged_start(judge: Judge, reference: Any, tokenizer: Any, answers: Answers,
                 reference_context: Callable[[], Any] | None = None, **sampling: Any) -> dict[str, Any]:
    """The starting policy's answers (the oracle evaluation's, else sampled now with the policy's seed)
    and the judge's scores of them: {ids, texts, rewards, truncated}, JSON-able for the cache."""
    side: dict[str, Any] = {"ids": answers.start_ids, "texts": answers.start_texts}
    if side["ids"] is None:
        side = start_answers(reference, tokenizer, answers.prompt_ids, reference_context=reference_context, **sampling)
    scores = score_share(judge, answers.prompts, side["texts"], "the starting policy's")
    return {**side, "rewards": scores.rewards, "truncated": scores.truncated}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def judged_metrics(rewards: list[float], start_rewards: list[float], lengths: list[int], start_lengths: list[int],
                   kl: float, truncated: int) -> dict[str, float]:
    """The eval/ metrics of a judged run (see the module docstring)."""
    return {
        "eval/judge_reward": mean(rewards),
        "eval/judge_reward_start": mean(start_rewards),
        "eval/judge_win_rate": win_rate(rewards, start_rewards),
        "eval/judge_lc_win_rate": lc_win_rate(rewards, start_rewards, lengths, start_lengths),
        "eval/judge_truncated": float(truncated),
        "eval/length": mean(lengths),
        "eval/length_start": mean(start_lengths),
        "eval/kl": kl,
    }


def judge_answers(judge: Judge, answers: Answers, start: dict[str, Any]) -> tuple[dict[str, float], list[dict]]:
    """Score the policy's answers; (metrics, one judgement record per prompt) against the start's side."""
    scores = score_share(judge, answers.prompts, answers.texts, "the policy's")
    start_lengths = response_lengths(start["ids"], answers.eos_id)
    truncated = scores.truncated + int(start.get("truncated", 0))
    if truncated:
        log.warning(f"judge: {truncated} of {2 * len(answers.texts)} answers were cut to fit the judge "
                    "(judge.max_length; eval/judge_truncated): their scores read only their start")
    metrics = judged_metrics(scores.rewards, start["rewards"], answers.lengths, start_lengths, answers.kl, truncated)
    records = [
        {"prompt": p, "response": t, "response_start": st, "score": s, "score_start": ss, "length": n,
         "length_start": ns}
        for p, t, st, s, ss, n, ns in zip(answers.prompts, answers.texts, start["texts"], scores.rewards,
                                          start["rewards"], answers.lengths, start_lengths)
    ]
    return metrics, records


def write_judgements(path: Path, records: list[dict]) -> None:
    """judgements.jsonl, one record a line, written whole (temp + fsync + rename)."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def logged_samples(records: list[dict], n: int) -> list[dict]:
    """The first `n` records as results.json's and W&B's samples (a chat prompt as its last message)."""
    def text(prompt: Prompt) -> str:
        return prompt if isinstance(prompt, str) else (prompt[-1]["content"] if prompt else "")

    return [{"prompt": text(r["prompt"]), "response": r["response"], "reference_response": r["response_start"],
             "reward": r["score"]} for r in records[:n]]
