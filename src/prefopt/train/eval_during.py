"""Evaluation during training (`eval.every_n_steps=N`, off by default): curves of the judged win rate.

Every N optimizer steps the policy answers a fixed subset of the held-out prompts
(`eval.during_training_prompts`, default 64; the same prompts and sampling seed every time), the run's
judge scores the answers (a reward model where one is chosen, else the task's oracle), and the loggers get
`eval/during_win_rate` (against the starting policy's answers to the same prompts, ties half),
`eval/during_reward`, `eval/during_reward_start` and `eval/during_length` at `trainer/global_step`, plus, in
W&B, a table of a few answers (`eval/during_samples`). The starting policy's side is sampled once, when
training starts (the policy is then the start; a resumed run loads the start again). Each evaluation's
cost is printed, and the total with its share of the training wall time at the end. Only a run on one
device evaluates during training (a warning says so otherwise). The final evaluation is unchanged.
Built by prefopt.run.steps.trainer_for. Exercised by `pytest tests/test_eval_during.py`.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable

import torch
from lightning.pytorch.callbacks import Callback

from prefopt.eval.evaluate import win_rate
from prefopt.log import get_logger

log = get_logger()
StartFn = Callable[[], tuple[torch.nn.Module, Any]]  # (starting model, context entered around its use)


class DuringTrainingEval(Callback):
    """Judged answers every `every` steps (see the module docstring). `judge_rewards(prompts, texts)` scores
    a batch; `start_fn` gives the starting policy on a resume; `sampling`: max_new_tokens, temperature,
    seed, batch_size as the final evaluation samples."""

    def __init__(self, every: int, prompts: list[Any], prompt_ids: list[list[int]], tokenizer: Any,
                 judge_rewards: Callable[[list[Any], list[str]], list[float]], sampling: dict[str, Any],
                 start_fn: StartFn | None = None, n_table: int = 4) -> None:
        self.every, self.prompts, self.prompt_ids = int(every), list(prompts), list(prompt_ids)
        self.tokenizer, self.judge_rewards, self.sampling = tokenizer, judge_rewards, dict(sampling)
        self.start_fn, self.n_table = start_fn, n_table
        self.start: dict[str, list] | None = None
        self.spent, self.count, self.train_started = 0.0, 0, 0.0
        self.enabled = self.every > 0 and bool(self.prompts)

    def _answers(self, model: torch.nn.Module, context: Callable[[], Any] | None = None) -> dict[str, list]:
        from prefopt.eval.evaluate import response_lengths
        from prefopt.eval.generation import sample

        with torch.no_grad(), (context or nullcontext)():
            ids = sample(model, self.tokenizer, self.prompt_ids, desc="eval during training", **self.sampling)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        rewards = [float(r) for r in self.judge_rewards(self.prompts, texts)]
        return {"texts": texts, "rewards": rewards, "lengths": response_lengths(ids, self.tokenizer.eos_token_id)}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.train_started = time.time()
        if self.enabled and getattr(trainer, "world_size", 1) > 1:
            log.warning("warning: eval.every_n_steps evaluates during training on one device only; this run has "
                        f"{trainer.world_size}: skipped (the final evaluation is unchanged)")
            self.enabled = False
        if not self.enabled:
            return
        started = time.time()
        if trainer.global_step == 0:  # the policy is still the starting policy
            self.start = self._answers(pl_module.policy)
        elif self.start_fn is not None:
            model, context = self.start_fn()
            self.start = self._answers(model, context)
        self.spent += time.time() - started

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if not self.enabled or self.start is None or step == 0 or step % self.every or step == getattr(self, "_last", -1):
            return
        self._last = step
        started = time.time()
        ours = self._answers(pl_module.policy)
        metrics = self.metrics(ours)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            self._table(logger, ours, step)
        took = time.time() - started
        self.spent, self.count = self.spent + took, self.count + 1
        log.info(f"eval during training at step {step}: win rate {metrics['eval/during_win_rate']:.3f}, reward "
                 f"{metrics['eval/during_reward']:.3f}, length {metrics['eval/during_length']:.1f} "
                 f"({len(self.prompts)} prompts, {took:.1f}s)")

    def metrics(self, ours: dict[str, list]) -> dict[str, float]:
        n = len(ours["rewards"])
        return {
            "eval/during_win_rate": win_rate(ours["rewards"], self.start["rewards"]),
            "eval/during_reward": sum(ours["rewards"]) / n,
            "eval/during_reward_start": sum(self.start["rewards"]) / n,
            "eval/during_length": sum(ours["lengths"]) / n,
        }

    def _table(self, logger: Any, ours: dict[str, list], step: int) -> None:
        if not hasattr(logger, "log_table") or not self.n_table:
            return
        rows = [[step, str(p if isinstance(p, str) else p[-1]["content"]), t, r, s]
                for p, t, r, s in zip(self.prompts, ours["texts"], ours["rewards"], self.start["texts"])]
        logger.log_table(key="eval/during_samples", columns=["step", "prompt", "response", "reward", "start_response"],
                         data=rows[: self.n_table], step=step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.enabled and self.count:
            wall = max(time.time() - self.train_started, 1e-9)
            log.info(f"eval during training: {self.count} evaluation(s) of {len(self.prompts)} prompts took "
                     f"{self.spent:.1f}s, {100 * self.spent / wall:.0f}% of the training wall time")
