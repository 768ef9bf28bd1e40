"""The judge of a run's answers: one interface for whatever scores (prompt, response) pairs at evaluation.

`conf/judge/` picks one (`judge=oracle|reward_model|vader|none`), a `_target_` component built by
`prefopt.config.run_plan.eval_judge`:
- `OracleJudge` (`judge=oracle`, the default): the task's own gold reward (sort: correctness and length;
  imdb: the sentiment classifier). Its metrics keep their names: eval/oracle_reward, eval/win_rate, ...
  On data with no oracle (data=jsonl, ultrafeedback) it scores nothing, as judge=none;
- `RewardModelJudge` (`judge=reward_model judge.path=FOLDER`, prefopt/eval/judges/reward_model.py): a local
  Hugging Face sequence-classification reward model; its metrics are eval/judge_*. On a task with an
  oracle it is a second, independent judge: the oracle's metrics are reported too;
- `VaderJudge` (`judge=vader`, prefopt/eval/judges/vader.py): VADER's lexicon sentiment score, offline, a
  second judge for data=imdb independent of its classifier (metrics eval/judge_* beside the oracle's);
- `NoJudge` (`judge=none`): answers are not scored (generations.json only, with eval.generate=true).

A judge's `score(prompts, responses)` takes a batch of prompts as the data rows have them (a string, or a
list of {role, content} messages: prefopt/data/rows.py) and one response string each, and returns a
`JudgeScores` (one float each, higher is better, and how many inputs it had to truncate). `check()` fails
in one line before training (reading configs and tokenizers, not weights) where the judge cannot work,
`check_prompts(prompts)` where it cannot format the data's prompts; `fingerprint()` keys the starting
policy's cached scores (prefopt.eval.cache); `close()` frees what `score` loaded. `judges(oracle)` says
which judges score a run given the task's oracle (`Judges`). `scored` checks every score is a number,
naming the prompt of one that is not; `score_share` scores one rank's contiguous share (prefopt.eval.rank_share
splits a run's judging over its data-parallel ranks).
Exercised by `pytest tests/test_judge.py`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

from prefopt.errors import ConfigError

Prompt = Union[str, list[dict[str, str]]]  # a prompt as a normalized data row has it
Oracle = Callable[[list[str], list[str]], list[float]]  # a task's gold reward (prefopt.tasks.base)


class JudgeError(ConfigError):
    """A judge that cannot be used (a judge.path that is no reward model, a tokenizer that cannot format
    the prompts) or a score that is not a number: one line naming the setting, or the prompt."""


@dataclass
class JudgeScores:
    """One score per (prompt, response), in order, and how many inputs were truncated to fit the judge."""

    rewards: list[float]
    truncated: int = 0


@dataclass(frozen=True)
class Judges:
    """Who scores a run's answers. `oracle`: the task's gold reward (metrics eval/oracle_reward,
    eval/oracle_reward_start, eval/win_rate, eval/kl, eval/length); `extra`: a judge other than the
    oracle (metrics eval/judge_*). Either may be None."""

    oracle: Optional["Judge"] = None
    extra: Optional["Judge"] = None


class Judge(ABC):
    """Scores (prompt, response) pairs. Constructed from `cfg.judge`; cheap until `score`."""

    name: str = "judge"

    @abstractmethod
    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> JudgeScores:
        """One score per pair, higher is better."""

    def rewards(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """`score`'s rewards alone (the form of a task's oracle)."""
        return self.score(prompts, responses).rewards

    def check(self) -> None:
        """Raise a one-line error now when the judge cannot work (called before the task builds its data)."""

    def check_prompts(self, prompts: Sequence[Prompt]) -> None:
        """Raise a one-line error now when the judge cannot format these prompts (called before training)."""

    def fingerprint(self) -> Any:
        """What the judge's scores depend on: part of the key of the starting policy's cached scores."""
        return self.name

    def close(self) -> None:
        """Free what `score` loaded (weights); a later `score` loads them again."""

    def judges(self, oracle: Optional[Oracle]) -> Judges:
        """This judge beside the task's oracle (when the task has one): both are reported."""
        return Judges(oracle=OracleJudge().bound(oracle) if oracle is not None else None, extra=self)

    def describe(self) -> str:
        return self.name

    def unscored_note(self, data: str) -> Optional[str]:
        """A line for the log when this judge scores nothing on `data`, if that needs saying."""
        return None


class OracleJudge(Judge):
    """The task's own gold reward (`TaskArtifacts.oracle`), bound to it by `judges`."""

    name = "oracle"

    def __init__(self) -> None:
        self.oracle: Optional[Oracle] = None

    def bound(self, oracle: Oracle) -> "OracleJudge":
        judge = OracleJudge()
        judge.oracle = oracle
        return judge

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> JudgeScores:
        if self.oracle is None:
            raise JudgeError("judge=oracle: this data has no oracle (gold reward); pick judge=reward_model "
                             "judge.path=FOLDER or judge=none")
        return JudgeScores([float(r) for r in self.oracle(list(prompts), list(responses))])

    def judges(self, oracle: Optional[Oracle]) -> Judges:
        return Judges(oracle=self.bound(oracle) if oracle is not None else None)

    def unscored_note(self, data: str) -> Optional[str]:
        return f"data={data} has no oracle: answers are not scored (judge=reward_model judge.path=FOLDER scores them)"


class NoJudge(Judge):
    """No judge: the answers are not scored (nor the task's oracle asked)."""

    name = "none"

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> JudgeScores:
        raise JudgeError("judge=none scores nothing")

    def judges(self, oracle: Optional[Oracle]) -> Judges:
        return Judges()


def prompt_text(prompt: Prompt, width: int = 80) -> str:
    """A prompt in one short line, to name it in a message: a string, or a chat prompt's last message."""
    text = prompt if isinstance(prompt, str) else (prompt[-1]["content"] if prompt else "")
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def scored(judge: Judge, prompts: Sequence[Prompt], responses: Sequence[str], whose: str) -> JudgeScores:
    """`judge.score`, with one score per pair and every score a finite number; else the run fails naming
    the first prompt whose score is not (`whose`: "the policy's", "the starting policy's" answer)."""
    out = judge.score(prompts, responses)
    if len(out.rewards) != len(prompts):
        raise JudgeError(f"judge={judge.name} gave {len(out.rewards)} scores for {len(prompts)} answers")
    for prompt, reward in zip(prompts, out.rewards):
        if not math.isfinite(reward):
            raise JudgeError(f"judge={judge.describe()} scored {whose} answer to the prompt {prompt_text(prompt)} "
                             f"{reward}, not a number; a reward model in float16 can overflow: try judge.dtype="
                             "float32 or bfloat16")
    return out


def score_share(judge: Judge, prompts: Sequence[Prompt], responses: Sequence[str], whose: str, rank: int = 0,
                world: int = 1, gather: Optional[Callable[[Any], list[Any]]] = None) -> JudgeScores:
    """Rank `rank` of `world` scores its contiguous share, pairs [rank·n // world, (rank + 1)·n // world);
    `gather` (every rank's share, e.g. torch.distributed's all_gather_object) puts the shares back in order.
    world=1: all pairs here. (A run's data-parallel ranks share a judge through prefopt.eval.rank_share,
    whose `SharedJudge` is the `judge` here on rank 0.)"""
    n = len(prompts)
    mine = list(range(rank * n // world, (rank + 1) * n // world))
    part = scored(judge, [prompts[i] for i in mine], [responses[i] for i in mine], whose)
    shares = gather((mine, part)) if world > 1 and gather is not None else [(mine, part)]
    rewards = [0.0] * n
    for indices, share in shares:
        for i, reward in zip(indices, share.rewards):
            rewards[i] = reward
    return JudgeScores(rewards, sum(share.truncated for _, share in shares))
