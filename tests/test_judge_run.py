"""`python src/run.py ... judge=...` end to end: a reward model judging a run on chat file data (metrics in
results.json and the CSV, judgements.jsonl, the start side cached across a sweep), the sort task's oracle
numbers unchanged under the default judge and beside a second judge, and bad judges stopped in one line
before training."""

import csv
import json

import pytest

from test_judge import reward_model_folder
from test_run import SMALL_SORT, run_cli

pytestmark = pytest.mark.slow  # every test here starts a run

JUDGED = ("eval/judge_reward", "eval/judge_reward_start", "eval/judge_win_rate", "eval/judge_lc_win_rate",
          "eval/judge_truncated", "eval/length", "eval/length_start", "eval/kl")
# data=sort's oracle metrics for SMALL_SORT loss=dpo, measured with the code before judges existed (commit
# 8a69b36, this machine's CPU): the default judge must give them unchanged
BEFORE = {"eval/oracle_reward": 0.4779885912698412, "eval/oracle_reward_start": 0.5022073412698412,
          "eval/win_rate": 0.4166666666666667, "eval/kl": 1.7619465241829555, "eval/length": 7.8125}


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return reward_model_folder(tmp_path_factory.mktemp("judge-rm") / "rm")


def chat_pairs(path, n=24):
    rows = []
    for i in range(n):
        ask = [{"role": "user", "content": f"What is {i} plus {i}?"}]
        rows.append({"prompt": ask, "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
                     "rejected": [{"role": "assistant", "content": f"Maybe {2 * i + 1}, or not."}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_reward_model_judges_a_sweep_on_chat_file_data(rm_dir, cache_root, tmp_path):
    pairs = chat_pairs(tmp_path / "chat.jsonl")
    proc = run_cli(["-m", "loss=dpo,ipo", "data=jsonl", f"data.path={pairs}", "data.source.eval_fraction=0.25",
                    "model.vocab_size=300", "trainer.max_steps=3", "data.batch_size=4", "judge=reward_model",
                    f"judge.path={rm_dir}", "judge.batch_size=4", "eval.generate_max_new_tokens=8",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.sweep.subdir=${hydra.job.num}"],
                   cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    caches = []
    for job in ("0", "1"):
        run = tmp_path / "sweep" / job
        results = json.loads((run / "results.json").read_text())
        assert results["status"] == "completed", results.get("error")
        m = results["metrics"]
        assert set(JUDGED) <= set(m) and not any(k.startswith("eval/oracle") for k in m)
        assert 0 <= m["eval/judge_win_rate"] <= 1 and 0 <= m["eval/judge_lc_win_rate"] <= 1
        assert m["eval/judge_truncated"] == 0 and 0 < m["eval/length"] <= 8
        judgements = [json.loads(x) for x in (run / "judgements.jsonl").read_text().splitlines()]
        assert len(judgements) == 6 and judgements[0]["prompt"][0]["role"] == "user"  # 6 eval rows, chat prompts
        assert sum(j["score"] for j in judgements) / 6 == pytest.approx(m["eval/judge_reward"])
        assert sum(j["length_start"] for j in judgements) / 6 == pytest.approx(m["eval/length_start"])
        with open(run / "csv" / "metrics.csv") as fh:
            logged = [row for row in csv.DictReader(fh) if row.get("eval/judge_reward")]
        assert float(logged[-1]["eval/judge_lc_win_rate"]) == pytest.approx(m["eval/judge_lc_win_rate"])
        assert results["info"]["judges"] == ["reward_model"]
        caches.append(results["info"]["eval_judged_start_cache"])
        assert results["samples"] and results["samples"][0]["prompt"].startswith("What is")
    start_scores = [[json.loads(x)["score_start"] for x in (tmp_path / "sweep" / j / "judgements.jsonl")
                     .read_text().splitlines()] for j in ("0", "1")]
    assert caches == ["built", "hit"] and start_scores[0] == start_scores[1]  # one start side for the sweep


def test_sort_oracle_numbers_are_unchanged_by_default_and_beside_a_second_judge(rm_dir, cache_root, tmp_path):
    common = [*SMALL_SORT, "loss=dpo", "logger=none"]
    proc = run_cli([*common, f"hydra.run.dir={tmp_path / 'default'}"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    default = json.loads((tmp_path / "default" / "results.json").read_text())
    assert default["config"]["judge"]["_target_"] == "prefopt.eval.judge.OracleJudge"
    evals = {k: v for k, v in default["metrics"].items() if k.startswith("eval/")}
    assert evals == pytest.approx(BEFORE, rel=1e-9, abs=1e-12)
    assert not (tmp_path / "default" / "judgements.jsonl").exists()
    proc = run_cli([*common, "judge=reward_model", f"judge.path={rm_dir}", f"hydra.run.dir={tmp_path / 'both'}"],
                   cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    both = json.loads((tmp_path / "both" / "results.json").read_text())["metrics"]
    assert {k: both[k] for k in evals} == evals  # the oracle's numbers, and the same answers judged
    assert set(JUDGED) <= set(both) and len((tmp_path / "both" / "judgements.jsonl").read_text().splitlines()) == 48


def test_bad_judges_stop_in_one_line_before_training(rm_dir, cache_root, tmp_path):
    missing = tmp_path / "no-such-rm"
    proc = run_cli(["data=sort", "judge=reward_model", f"judge.path={missing}", f"hydra.run.dir={tmp_path / 'a'}"],
                   cache_root, tmp_path, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: judge.path={missing} does not exist")
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["status"] == "failed" and results["stage"] == "setup"
    plain = reward_model_folder(tmp_path / "plain", chat_template=False)
    pairs = chat_pairs(tmp_path / "chat.jsonl")
    proc = run_cli(["data=jsonl", f"data.path={pairs}", "model.vocab_size=300", "judge=reward_model",
                    f"judge.path={plain}", f"hydra.run.dir={tmp_path / 'b'}"], cache_root, tmp_path, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert line == (f"error: the tokenizer of judge.path={plain} has no chat template, so it cannot format the "
                    "data's chat prompts: use a reward model whose tokenizer has one")
    assert not (tmp_path / "b" / "checkpoints").exists()  # training never started
