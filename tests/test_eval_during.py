"""Evaluation during training (prefopt.train.eval_during): every N steps the policy answers the same
prompts with the same seed, the judge scores them against the starting policy's answers, and the loggers
get the curves; an unchanged policy gives win rate 0.5 and its start's reward exactly."""

from types import SimpleNamespace

import pytest
import torch

from prefopt.models.load import build_tiny
from prefopt.tasks.sort import build_sort_tokenizer
from prefopt.eval.evaluate import win_rate
from prefopt.train.eval_during import DuringTrainingEval

PROMPTS = ["3 1 2 =", "9 8 7 6 =", "5 5 1 ="]


class Recorder:
    def __init__(self):
        self.rows = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))


def callback(tok, every=2):
    return DuringTrainingEval(every, PROMPTS, tok(PROMPTS)["input_ids"], tok, judge_rewards=lambda p, t: [len(x) for x in t],
                              sampling=dict(max_new_tokens=6, temperature=1.0, seed=0, batch_size=8))


def test_win_rate_counts_ties_half():
    assert win_rate([1.0, 2.0, 3.0, 0.0], [1.0, 1.0, 4.0, -1.0]) == (0.5 + 1 + 0 + 1) / 4


def test_curves_every_n_steps_against_the_start():
    tok = build_sort_tokenizer()
    model = build_tiny(tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    logger = Recorder()
    trainer = SimpleNamespace(global_step=0, world_size=1, loggers=[logger])
    cb = callback(tok)
    cb.on_train_start(trainer, SimpleNamespace(policy=model))
    for step in (1, 2, 3):
        trainer.global_step = step
        cb.on_train_batch_end(trainer, SimpleNamespace(policy=model), None, None, step - 1)
    assert [s for s, _ in logger.rows] == [2]  # every 2 steps only
    m = logger.rows[0][1]
    assert m["eval/during_win_rate"] == 0.5 and m["eval/during_reward"] == m["eval/during_reward_start"]
    with torch.no_grad():  # a changed policy: a peaked next-token distribution answers differently
        model.lm_head.weight.mul_(50.0)
    trainer.global_step = 4
    cb.on_train_batch_end(trainer, SimpleNamespace(policy=model), None, None, 3)
    changed = logger.rows[1][1]
    assert changed["eval/during_reward_start"] == m["eval/during_reward_start"]  # the start is sampled once
    assert changed["eval/during_reward"] != m["eval/during_reward"]
    assert cb.count == 2 and cb.spent > 0


def test_off_by_default_and_on_several_devices():
    tok = build_sort_tokenizer()
    model = build_tiny(tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    for cb, world in ((callback(tok, every=0), 1), (callback(tok), 2)):
        logger = Recorder()
        trainer = SimpleNamespace(global_step=0, world_size=world, loggers=[logger])
        cb.on_train_start(trainer, SimpleNamespace(policy=model))
        trainer.global_step = 2
        cb.on_train_batch_end(trainer, SimpleNamespace(policy=model), None, None, 1)
        assert logger.rows == [] and cb.start is None


@pytest.mark.slow
def test_a_run_logs_the_curves_to_the_csv_and_the_offline_wandb_run(cache_root, tmp_path):
    import csv

    from test_run import SMALL_SORT, run_cli
    from wandb_records import offline_runs

    run_dir = tmp_path / "run"
    proc = run_cli([*SMALL_SORT, "loss=dpo", "trainer.max_steps=12", "eval.every_n_steps=4",
                    "eval.during_training_prompts=16", "logger=wandb", f"hydra.run.dir={run_dir}"],
                   cache_root, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    assert "eval during training at step 8: win rate" in out and "of the training wall time" in out
    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if r.get("eval/during_win_rate")]
    assert steps == [4, 8, 12]
    [run] = offline_runs(run_dir / "wandb")
    logged = [row for row in run.history if "eval/during_win_rate" in row]
    assert len(logged) == 3 and all(0.0 <= row["eval/during_win_rate"] <= 1.0 for row in logged)
