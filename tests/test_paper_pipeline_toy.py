"""The paper-scale study end to end at toy scale (`sweep=paper_sensitivity experiment=mistral7b`): a tiny
random Mistral with the real Mistral-7B tokenizer, UltraFeedback-format chat rows, a tiny random reward
model as the judge, two losses × two β; then `analyze` ranks the study by the length-controlled win rate
and logs the W&B study run (offline). What a 7B cluster runs, with every piece real but the sizes."""

import json
import os
import subprocess
import sys

import pytest

from test_experiment_toy import tiny_mistral, toy_args, ultrafeedback_rows  # noqa: F401 - fixture
from test_judge import reward_model_folder
from test_run import ROOT, run_cli
from wandb_records import offline_runs

pytestmark = pytest.mark.slow


def test_the_paper_study_runs_judges_and_reports_at_toy_scale(tiny_mistral, cache_root, tmp_path):  # noqa: F811
    rm = reward_model_folder(tmp_path / "rm")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in ultrafeedback_rows(24)))
    sweep = tmp_path / "paper"
    args = ["-m", "sweep=paper_sensitivity", *toy_args(tiny_mistral, pairs), "loss=dpo,simpo",
            "sweep.beta_step=b1,b2", "sweep.lr_step=l4", f"judge.path={rm}", "logger=wandb",
            "trainer.max_steps=2", "data.effective_batch_size=4", "eval.generate_max_prompts=4",
            "eval.generate_max_new_tokens=6", f"hydra.sweep.dir={sweep}"]
    proc = run_cli(args, cache_root, tmp_path, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "multirun: 4 of 4 jobs completed" in out
    results = [json.loads(p.read_text()) for p in sorted(sweep.rglob("results.json"))]
    assert len(results) == 4
    for r in results:
        assert r["status"] == "completed"
        for key in ("eval/judge_reward", "eval/judge_win_rate", "eval/judge_lc_win_rate", "eval/length"):
            assert isinstance(r["metrics"][key], float), key
    assert sorted((r["config"]["method"], r["config"]["loss"]["beta"]) for r in results) == [
        ("dpo", 0.01), ("dpo", 0.05), ("simpo", 1.5), ("simpo", 2.0)]
    assert len(list(sweep.rglob("judgements.jsonl"))) == 4 and len(list(sweep.rglob("generations.json"))) == 4

    analysis = subprocess.run([sys.executable, str(ROOT / "src" / "analyze.py"), str(sweep), "--wandb"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"})
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    report = (sweep / "sensitivity.md").read_text()
    assert "eval/judge_lc_win_rate" in report and "paper_sensitivity" in report
    studies = [run for run in offline_runs(sweep / "wandb") if run.job_type == "study"]
    assert len(studies) == 1
