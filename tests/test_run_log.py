"""The run folder keeps the story: run.log holds what the console showed (a redrawn progress bar once,
in its final state), progress is a plain line every N steps off a terminal, cache hits say "cached"
and where from, the detected data layout is printed and recorded, validation runs a few times.

Run: `.venv/bin/python -m pytest tests/test_run_log.py -q` (about 40 s: two small runs).
"""

import json
import sys
from types import SimpleNamespace

import pytest
from test_run import SMALL_SORT, run_cli

from prefopt.data import row_format as layout
from prefopt.train.progress import ConsoleLog, StepProgressBar
from prefopt.tasks.base import Built
from prefopt.train.trainer_factory import validation_steps


def test_console_log_copies_stdout_and_stderr_and_keeps_a_redrawn_line_once(tmp_path, capsys):
    with ConsoleLog(tmp_path / "run.log"):
        print("first line")
        sys.stderr.write("bar 10%\rbar 50%\rbar 100%\n")
        print("no newline at the end", end="")
    print("after: not logged")
    assert (tmp_path / "run.log").read_text() == "first line\nbar 100%\nno newline at the end\n"
    out, err = capsys.readouterr()
    assert "first line" in out and "after: not logged" in out and "bar 10%" in err  # the console saw all


def fake_trainer(step, max_steps=12, loss=None):
    metrics = {} if loss is None else {"train/loss": loss, "train/rewards/accuracies": 0.75}
    return SimpleNamespace(global_step=step, max_steps=max_steps, callback_metrics=metrics)


def test_progress_off_a_terminal_is_a_plain_line_every_n_steps(capsys):
    bar = StepProgressBar("dpo on sort", terminal=False)
    bar.on_train_start(fake_trainer(0), None)
    for step in range(1, 13):
        bar.on_train_batch_end(fake_trainer(step, loss=0.5 if step >= 10 else None), None, None, None, step - 1)
    bar.on_train_end(fake_trainer(12), None)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" (")[0] for line in lines] == [  # every max(5, max_steps // 10) steps, and the last
        "[prefopt] dpo on sort: step 5/12",
        "[prefopt] dpo on sort: step 10/12, loss 0.500, accuracy 0.750",
        "[prefopt] dpo on sort: step 12/12",  # the same loss and accuracy: not repeated
    ]


def test_a_resumed_run_says_so_and_counts_its_rate_from_there(capsys):
    import time

    bar = StepProgressBar("dpo on sort", terminal=False, every=5)
    trainer = SimpleNamespace(global_step=40, max_steps=60, callback_metrics={}, ckpt_path="run/checkpoints/last.ckpt")
    bar.on_train_start(trainer, None)
    bar.started = time.time() - 10.0  # 10 s since training started
    bar.on_train_batch_end(fake_trainer(60, max_steps=60), None, None, None, 59)
    assert capsys.readouterr().out.strip().splitlines() == [
        "[prefopt] dpo on sort: resumed from step 40 (checkpoint run/checkpoints/last.ckpt), 20 to go",
        "[prefopt] dpo on sort: step 60/60 (2.0 steps/s)",  # 20 steps in 10 s, not 60
    ]


def test_progress_of_an_epoch_run_counts_to_the_estimated_optimizer_steps(capsys):
    def epoch_trainer(step):  # max_steps -1: the total comes from epochs and accumulation
        return SimpleNamespace(global_step=step, max_steps=-1, estimated_stepping_batches=6, callback_metrics={})

    bar = StepProgressBar("simpo on jsonl", terminal=False, every=5)
    bar.on_train_start(epoch_trainer(0), None)
    for step in range(1, 7):
        bar.on_train_batch_end(epoch_trainer(step), None, None, None, step - 1)
    lines = [line.split(" (")[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert lines == ["[prefopt] simpo on jsonl: step 5/6", "[prefopt] simpo on jsonl: step 6/6"]


def test_only_rank_zero_prints_progress(capsys):
    worker = SimpleNamespace(global_step=5, max_steps=12, callback_metrics={}, is_global_zero=False)
    bar = StepProgressBar("dpo on sort", terminal=False, every=5)
    bar.on_train_start(worker, None)
    bar.on_train_batch_end(worker, None, None, None, 4)
    assert capsys.readouterr().out == ""


def test_a_terminal_bar_reaches_run_log_once(tmp_path):
    with ConsoleLog(tmp_path / "run.log"):
        bar = StepProgressBar("rmipo", terminal=True)
        bar.on_train_start(fake_trainer(0), None)
        for step in range(1, 13):
            bar.on_train_batch_end(fake_trainer(step), None, None, None, step - 1)
        bar.on_train_end(fake_trainer(12), None)
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert len(lines) == 1 and "12/12" in lines[0] and "\r" not in lines[0]


def test_built_says_built_or_cached(tmp_path):
    build = Built(lambda out: {"n": 1})
    assert build.origin(12.4, tmp_path) == f"cached ({tmp_path})"  # another run built it
    assert build(tmp_path) == {"n": 1}
    assert build.origin(12.4, tmp_path) == "built in 12s"


@pytest.mark.parametrize("row, expected", [
    ({"prompt": "2+2?", "chosen": "4", "rejected": "5"}, layout.STRINGS),
    ({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, layout.CHAT),
    ({"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "b"}]}, layout.IMPLICIT),
    ({"prompt": "hi", "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "b"}]},
     layout.MIXED_PROMPT_STRING),
])
def test_data_layout_is_detected_from_the_first_raw_row(tmp_path, row, expected):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert layout.detect_layout({"path": str(path), "split": "train"}, []) == expected


def test_embedded_task_rows_are_strings():
    assert layout.detect_layout({}, [{"prompt": "31>", "chosen": "13", "rejected": "133"}]) == layout.STRINGS


@pytest.mark.parametrize("max_steps, every", [(200, 50), (12, 3), (20, 5), (150, 30), (23, 23), (3, 3)])
def test_validation_steps_end_on_the_last_step(max_steps, every):
    assert validation_steps(max_steps) == every and max_steps % every == 0


@pytest.fixture(scope="module")
def two_runs(cache_root, tmp_path_factory):
    """The same small run twice into two folders: the first builds the task, the second finds it cached."""
    tmp = tmp_path_factory.mktemp("runlog")
    cache = tmp / "cache"  # its own cache, so that the first run surely builds
    for name in ("first", "second"):
        proc = run_cli([*SMALL_SORT, "loss=dpo", f"hydra.run.dir={tmp / name}"], cache, tmp)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "first", tmp / "second", proc


@pytest.mark.slow
def test_run_log_holds_the_console_without_redraws(two_runs):
    first, second, proc = two_runs
    log = (second / "run.log").read_text()
    for line in ("[prefopt] data: ", "[prefopt] data layout: strings", "[prefopt] dpo on sort: step 12/12",
                 "eval/oracle_reward", "results: "):
        assert line in log, line
    assert "\r" not in log and "it/s" not in log and len(log) < 10_000
    assert log.strip().splitlines()[-1] in proc.stdout  # the same text the console showed


@pytest.mark.slow
def test_cache_hits_say_cached_and_where_from(two_runs):
    first, second, _ = two_runs
    built, cached = (first / "run.log").read_text(), (second / "run.log").read_text()
    assert "SFT policy oracle reward" in built and "built in" in built
    sft_line = next(line for line in cached.splitlines() if "SFT policy oracle reward" in line)
    assert "built in" not in cached and "cached (" in sft_line and "sort_sft" in sft_line


@pytest.mark.slow
def test_results_record_the_data_layout(two_runs):
    _, second, _ = two_runs
    results = json.loads((second / "results.json").read_text())
    assert results["info"]["data_layout"] == layout.STRINGS
    assert results["config"]["data"]["pack"] == "auto" and results["info"]["data_pack"] is False  # a CPU run
