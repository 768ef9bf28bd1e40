"""Nothing lost late in a run (prefopt.run.steps, prefopt.run.runner, prefopt.store.atomic): the training
metrics are recorded in train_metrics.json as soon as fit ends; a failure in the evaluation or the export
records `status: failed`, its `stage`, the metrics computed so far and the command that re-runs only what
follows training; model/ is written whole or not at all; a results.json that cannot be written says the
run's real error on stderr; and a resume (`ckpt_path=last`) after a stop in the evaluation or export, with
nothing left to train, records the first attempt's train/, val/ and perf/ metrics."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tiny_model
from prefopt.run import runner, steps
from prefopt.run.results import ResultsNotWritten
from prefopt.run.steps import RunOutcome
from prefopt.store.atomic import replace_folder

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


class HalfWrittenTokenizer:
    """A tokenizer whose save fails midway (a full disk): one file written, then ENOSPC."""

    def save_pretrained(self, folder):
        (Path(folder) / "tokenizer_config.json").write_text("{")
        raise ENOSPC


class Tokenizer:
    def save_pretrained(self, folder):
        (Path(folder) / "tokenizer.json").write_text("{}")


def test_a_failed_export_leaves_no_partial_model_and_an_old_one_as_it_was(tmp_path):
    from prefopt.models.setup import save_policy

    with pytest.raises(OSError, match="No space left"):
        save_policy(tiny_model(), HalfWrittenTokenizer(), tmp_path / "model")
    assert list(tmp_path.iterdir()) == []  # no model/ with weights but no tokenizer, no staging folder

    save_policy(tiny_model(), Tokenizer(), tmp_path / "model")
    complete = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(complete)
    with pytest.raises(OSError, match="No space left"):
        save_policy(tiny_model(seed=1), HalfWrittenTokenizer(), tmp_path / "model")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == complete


def test_replace_folder_swaps_in_the_new_folder_and_clears_leftovers(tmp_path):
    def new(staging):
        staging.mkdir()
        (staging / "new.txt").write_text("new")

    def full(staging):
        staging.mkdir()
        raise ENOSPC

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.txt").write_text("old")
    (tmp_path / "model.tmp-1").mkdir()  # a staging folder a killed attempt left
    replace_folder(tmp_path / "model", new)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["new.txt"]
    os.rename(tmp_path / "model", tmp_path / "model.old-7")  # a kill between the two renames
    with pytest.raises(OSError):
        replace_folder(tmp_path / "model", full)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the old copy was put back first
    assert (tmp_path / "model" / "new.txt").read_text() == "new"


def test_train_metrics_are_reused_only_by_a_resume_of_this_folder_at_their_step(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    steps.record_train_metrics(run, 12, {"train/loss": 0.25, "val/loss": 0.5, "perf/pairs_per_s": 100.0})
    assert json.loads((run / "train_metrics.json").read_text())["step"] == 12
    here = {"resumed_from": {"checkpoint": str(run / "checkpoints" / "last.ckpt"), "step": 12}}
    assert steps.nothing_was_trained(here, 12, run)
    assert not steps.nothing_was_trained(here, 20, run)  # it trained 8 more steps
    assert not steps.nothing_was_trained({}, 12, run)  # a fresh start
    elsewhere = {"resumed_from": {"checkpoint": str(tmp_path / "other" / "checkpoints" / "last.ckpt"), "step": 12}}
    assert not steps.nothing_was_trained(elsewhere, 12, run)
    assert steps.recorded_train_metrics(run, 12) == {"train/loss": 0.25, "val/loss": 0.5, "perf/pairs_per_s": 100.0}
    assert steps.recorded_train_metrics(run, 11) == {}
    assert "holds no metrics for that step" in capsys.readouterr().err


def test_an_unwritable_results_json_says_the_runs_real_error(tmp_path, monkeypatch, capsys):
    real = Path.write_text

    def full(self, text, *args, **kwargs):
        if self.name.startswith("results.json"):
            raise ENOSPC
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    outcome = RunOutcome(interrupts=None, stage="export", metrics={"eval/win_rate": 0.5, "train/loss": 0.25})
    try:
        raise OSError(errno.ENOSPC, "No space left on device", "model.tmp-1/model.safetensors")
    except OSError as err:
        outcome.error = runner._failure_message(err)
        with pytest.raises(ResultsNotWritten) as stop:
            runner._write_failure(tmp_path / "results.json", err, outcome, 0.0, {"seed": 0})
    assert stop.value.code == 1 and list(tmp_path.iterdir()) == []
    err = capsys.readouterr().err
    assert err.startswith(f"error: could not write {tmp_path / 'results.json'} (No space left on device); the run's "
                          "outcome is not recorded\nthe run failed during export: OSError: [Errno 28] No space left "
                          "on device: 'model.tmp-1/model.safetensors'\nTraceback (most recent call last):")
    assert err.rstrip().endswith('its metrics: {"eval/win_rate": 0.5, "train/loss": 0.25}')


# ---- end to end: a run made to fail (or signalled) late, then resumed --------------------------------------
FAIL_AT = '''
import os, runpy, signal, sys, time
sys.path.insert(0, {src!r})
from prefopt.run import steps

def evaluation(*args, **kwargs):
    raise RuntimeError("the oracle broke")

def sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)

from pathlib import Path
import transformers
save = transformers.PreTrainedTokenizerBase.save_pretrained

def export(self, folder, *args, **kwargs):  # the task's own caches save tokenizers too: only model/ fails
    if not Path(folder).name.startswith("model.tmp-"):
        return save(self, folder, *args, **kwargs)
    (Path(folder) / "tokenizer_config.json").write_text("{{")
    raise OSError(28, "No space left on device")

where = os.environ["FAIL_AT"]
if where == "export":
    transformers.PreTrainedTokenizerBase.save_pretrained = export
else:
    steps.oracle_evaluation = {{"evaluation": evaluation, "sigterm": sigterm}}[where]
sys.argv = [{run_py!r}, *sys.argv[1:]]
runpy.run_path({run_py!r}, run_name="__main__")
'''


def failing_run(where, args, cache_root, tmp_path):
    from test_run import ROOT

    script = tmp_path / "fail_at.py"
    script.write_text(FAIL_AT.format(src=str(ROOT / "src"), run_py=str(ROOT / "src" / "run.py")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PREFOPT_CACHE": str(cache_root),
           "FAIL_AT": where}
    return subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def late_args(run_dir):
    from test_run import SMALL_SORT

    return [*SMALL_SORT, "loss=dpo", "logger=none", f"hydra.run.dir={run_dir}"]


def results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def trained(metrics):
    return {k: v for k, v in metrics.items() if k.startswith(("train/", "val/", "perf/"))}


@pytest.mark.slow
def test_export_failure_keeps_the_metrics_and_its_rerun_command_finishes(cache_root, tmp_path):
    from test_run import run_cli

    run_dir = tmp_path / "run"
    proc = failing_run("export", late_args(run_dir), cache_root, tmp_path)
    assert proc.returncode == 1
    failed = results(run_dir)
    assert (failed["status"], failed["stage"]) == ("failed", "export")
    assert failed["error"].startswith("OSError: [Errno 28] No space left on device; export failed after training")
    assert failed["error"].endswith(f"hydra.run.dir={run_dir} ckpt_path=last")
    assert "re-run only what follows training with: python src/run.py" in proc.stderr
    assert {"eval/oracle_reward", "eval/win_rate", "train/loss", "val/loss", "perf/pairs_per_s"} <= set(
        failed["metrics"])
    assert trained(failed["metrics"]) == json.loads((run_dir / "train_metrics.json").read_text())["metrics"]
    assert not [p for p in run_dir.iterdir() if p.name.startswith("model")]  # no partial model/, no staging

    proc = run_cli([*late_args(run_dir), "ckpt_path=last"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training had ended at step 12" in proc.stdout
    done = results(run_dir)
    assert done["status"] == "completed" and done["info"]["resumed_from"]["step"] == 12
    assert done["metrics"] == failed["metrics"]  # the same evaluation of the same weights, the recorded fit
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (run_dir / "model").iterdir()}


@pytest.mark.slow
@pytest.mark.parametrize("where", ["evaluation", "sigterm"])
def test_stop_in_the_evaluation_then_resume_records_the_first_attempts_training(where, cache_root, tmp_path):
    from test_run import run_cli

    run_dir = tmp_path / "run"
    proc = failing_run(where, late_args(run_dir), cache_root, tmp_path)
    recorded = json.loads((run_dir / "train_metrics.json").read_text())
    assert recorded["step"] == 12 and {"train/loss", "val/loss", "perf/pairs_per_s"} <= set(recorded["metrics"])
    first = results(run_dir)
    if where == "sigterm":
        assert proc.returncode == 143 and first["status"] == "interrupted"
    else:
        assert proc.returncode == 1 and (first["status"], first["stage"]) == ("failed", "evaluation")
        assert first["metrics"] == recorded["metrics"]  # the training's, nothing of the evaluation
        assert f"hydra.run.dir={run_dir} ckpt_path=last" in first["error"]

    proc = run_cli([*late_args(run_dir), "ckpt_path=last"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = results(run_dir)
    assert done["status"] == "completed"
    assert trained(done["metrics"]) == recorded["metrics"]
    assert {"eval/oracle_reward", "eval/win_rate"} <= set(done["metrics"]) and (run_dir / "model").is_dir()
