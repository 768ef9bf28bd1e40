"""judge=vader (prefopt/eval/judges/vader.py): VADER's compound score worked by hand for a positive, a
negative and a negated sentence; the prompt read only with include_prompt=true; beside a task's oracle it
is the second judge (both reported); the group composes; and end to end, a data=sort run reports the
oracle's metrics and eval/judge_* with judgements.jsonl holding VADER's scores."""

import json
import math
from pathlib import Path

import pytest

from prefopt.eval.judge import OracleJudge
from prefopt.eval.judges.vader import VaderJudge, prompt_words


def compound(x: float) -> float:
    """VADER's normalisation of a summed valence x: x / sqrt(x² + 15) (alpha = 15)."""
    return x / math.sqrt(x * x + 15)


def test_compound_scores_by_hand():
    # lexicon valences (vader_lexicon.txt in the wheel): great 3.1, terrible -2.1, good 1.9;
    # one "!" adds 0.292 to a positive sum; "not" before a word multiplies its valence by -0.74
    prompts = ["Review:"] * 4
    answers = ["This movie was great!", "This movie was terrible.", "The film is not good.", "It was a movie."]
    out = VaderJudge().score(prompts, answers)
    expected = [compound(3.1 + 0.292), compound(-2.1), compound(1.9 * -0.74), 0.0]
    assert out.rewards == pytest.approx(expected, abs=1e-4)  # VADER rounds compound to 4 decimals
    assert out.rewards == [0.6588, -0.4767, -0.3412, 0.0] and out.truncated == 0


def test_the_prompt_counts_only_with_include_prompt():
    prompt, answer = "A terrible, terrible start. ", "It was a movie."
    assert VaderJudge().rewards([prompt], [answer]) == [0.0]  # the answer alone: neutral
    assert VaderJudge(include_prompt=True).rewards([prompt], [answer])[0] < -0.5
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Review it."}]
    assert prompt_words(chat) == "Be kind.\nReview it."
    with pytest.raises(ValueError, match="include_prompt='yes' is not allowed"):
        VaderJudge(include_prompt="yes")


def test_vader_is_a_second_judge_beside_the_oracle():
    def oracle(prompts, responses):
        return [0.5] * len(responses)

    judge = VaderJudge()
    judge.check()
    both = judge.judges(oracle)
    assert isinstance(both.oracle, OracleJudge) and both.extra is judge
    assert judge.judges(None).oracle is None  # file data: VADER alone
    assert judge.fingerprint() == {"judge": "vader", "vadersentiment": "3.3.2", "include_prompt": False}
    assert VaderJudge(include_prompt=True).fingerprint() != judge.fingerprint()  # its cached start side differs


def test_the_vader_group_composes():
    from hydra import compose, initialize_config_dir

    from prefopt.config.run_plan import eval_judge
    from prefopt.config.validate import config_problems

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=imdb", "judge=vader", "judge.include_prompt=true"])
    judge = eval_judge(cfg)
    assert isinstance(judge, VaderJudge) and judge.include_prompt is True
    assert not [p for p in config_problems(cfg) if "judge" in p]


@pytest.mark.slow
def test_a_sort_run_reports_the_oracle_and_vader(cache_root, tmp_path):
    from test_run import SMALL_SORT, run_cli

    proc = run_cli([*SMALL_SORT, "loss=dpo", "logger=none", "judge=vader", f"hydra.run.dir={tmp_path / 'run'}"],
                   cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    m = results["metrics"]
    assert {"eval/oracle_reward", "eval/win_rate", "eval/judge_reward", "eval/judge_win_rate",
            "eval/judge_lc_win_rate"} <= set(m) and results["info"]["judges"] == ["oracle", "vader"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "judgements.jsonl").read_text().splitlines()]
    vader = VaderJudge()
    assert [r["score"] for r in lines] == vader.rewards([r["prompt"] for r in lines], [r["response"] for r in lines])
    assert sum(r["score"] for r in lines) / len(lines) == pytest.approx(m["eval/judge_reward"])
