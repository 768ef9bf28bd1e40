"""Scores judged elsewhere (`python src/analyze.py STUDY --scores FILE`): each run's leaderboard name
(prefopt.eval.export.generator_name, runs.csv `generator`), AlpacaEval's leaderboard.csv and run,metric,value
tables attached as metric columns (prefopt.analysis.scores), the study re-ranked by one of them, and the
one-line errors for rows that match no run, several, or a run twice. No network: a hand-made study and
hand-made leaderboards whose rankings are worked out by hand.

Run: `.venv/bin/python -m pytest tests/test_scores.py -q`.
"""

import hashlib
import json
import runpy
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from prefopt.analysis import analyze, attach_scores, load_runs, load_study, read_scores, swept_keys
from prefopt.eval.export import generator_name

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"dpo": "prefopt.losses.DPOLoss", "ipo": "prefopt.losses.IPOLoss"}
# method -> β -> (oracle reward, AlpacaEval LC win rate in %) of seeds 0 and 1. By the oracle, each method is
# best at β=1 (dpo .81, ipo .71: dpo ahead); by AlpacaEval, dpo is best at β=0.1 (.31) and ipo at β=1 (.42).
SCORES = {
    "dpo": {0.1: [(0.50, 30.0), (0.52, 32.0)], 1.0: [(0.80, 10.0), (0.82, 12.0)]},
    "ipo": {0.1: [(0.60, 20.0), (0.62, 22.0)], 1.0: [(0.70, 40.0), (0.72, 44.0)]},
}


def write_study(root: Path, generator: str | None = "named") -> dict[str, str]:
    """8 completed runs under `root` ({method}/beta={β},seed={s}); each records its generator in results.json
    (`named`: generator_name; None: no generations); returns {run: generator}."""
    names = {}
    for method, grid in SCORES.items():
        for beta, seeds in grid.items():
            for seed, (oracle, _) in enumerate(seeds):
                run = f"{method}/beta={beta},seed={seed}"
                folder = root / run
                (folder / ".hydra").mkdir(parents=True)
                hydra = f"hydra:\n  runtime:\n    choices:\n      loss: {method}\n"
                (folder / ".hydra" / "hydra.yaml").write_text(hydra)
                config = {"seed": seed, "loss": {"_target_": TARGETS[method], "beta": beta}, "optim": {"lr": 1e-4},
                          "sweep": {"name": "judged", "score": "eval/oracle_reward"}}
                record = {"status": "completed", "config": config, "seed": seed, "wall_time_s": 1.0,
                          "metrics": {"eval/oracle_reward": oracle, "eval/kl": 1.0 + beta}}
                if generator:
                    names[run] = generator_name(folder, method, beta, 1e-4, seed)
                    record["info"] = {"generations": {"n": 1, "generator": names[run]}}
                (folder / "results.json").write_text(json.dumps(record))
    return names


def leaderboard(names: dict[str, str], path: Path, extra: dict[str, float] | None = None) -> Path:
    """AlpacaEval's leaderboard.csv for the study's runs (index: the generator, unnamed), plus `extra` rows."""
    rows = {}
    for method, grid in SCORES.items():
        for beta, seeds in grid.items():
            for seed, (_, lc) in enumerate(seeds):
                rows[names[f"{method}/beta={beta},seed={seed}"]] = lc
    rows.update(extra or {})
    table = pd.DataFrame({"win_rate": {g: lc + 5 for g, lc in rows.items()},
                          "standard_error": {g: 1.5 for g in rows}, "n_wins": {g: 3 for g in rows},
                          "n_total": {g: 805 for g in rows}, "mode": {g: "community" for g in rows},
                          "avg_length": {g: 1200 for g in rows},
                          "length_controlled_winrate": rows, "lc_standard_error": {g: 0.8 for g in rows}})
    table.to_csv(path)  # as alpaca_eval writes it: the generator in the first, unnamed column
    return path


@pytest.fixture()
def study(tmp_path) -> tuple[Path, dict[str, str]]:
    names = write_study(tmp_path / "study")
    return tmp_path / "study", names


def test_generator_names_say_what_ran_and_differ_by_folder(tmp_path):
    name = generator_name(tmp_path / "a", "dpo", 0.1, 5e-7, 0, model="mistral7b")
    digest = hashlib.sha1(str((tmp_path / "a").resolve()).encode()).hexdigest()[:8]
    assert name == f"mistral7b-dpo-beta0.1-lr5e-07-seed0-{digest}"
    assert generator_name(tmp_path / "a", "dpo", 0.1, 5e-7, 0, model="mistral7b") == name  # a rerun keeps it
    assert generator_name(tmp_path / "b", "dpo", 0.1, 5e-7, 0, model="mistral7b") != name  # another folder
    assert generator_name(tmp_path / "a", "sft") == f"sft-{digest}"  # parts that are None are left out


def test_runs_carry_their_generator_which_is_no_axis(study, tmp_path):
    folder, names = study
    runs = load_runs(folder).set_index("run")
    assert runs["generator"].to_dict() == names and len(set(names.values())) == 8
    assert swept_keys(runs.reset_index(), "dpo") == ["loss.beta"]
    old = tmp_path / "old"  # a run from before results.json recorded it: the name in its generations.json
    write_study(old, generator=None)
    run = old / "dpo" / "beta=0.1,seed=0"
    (run / "generations.json").write_text(json.dumps([{"instruction": "hi", "output": "yo", "generator": "g1"}]))
    loaded = load_runs(old).set_index("run")["generator"]
    assert loaded["dpo/beta=0.1,seed=0"] == "g1" and loaded.isna().sum() == 7


def test_an_alpaca_eval_leaderboard_reranks_the_study(study, tmp_path):
    folder, names = study
    board = leaderboard(names, tmp_path / "leaderboard.csv")
    plain = pd.read_csv(analyze(folder, tmp_path / "oracle")["sensitivity.csv"]).set_index("method")
    assert plain.loc["dpo", "best"] == pytest.approx(0.81) and plain.loc["dpo", "best_point"] == "beta=1"
    written = analyze(folder, tmp_path / "judged", scores=[board], score="eval/alpaca_lc_win_rate")
    summary = pd.read_csv(written["sensitivity.csv"]).set_index("method")
    assert summary.loc["dpo", "best"] == pytest.approx(0.31) and summary.loc["dpo", "best_point"] == "beta=0.1"
    assert summary.loc["ipo", "best"] == pytest.approx(0.42) and summary.loc["ipo", "best_point"] == "beta=1"
    pairs = pd.read_csv(written["pairwise.csv"]).set_index(["a", "b", "stat"])
    assert pairs.loc[("dpo", "ipo", "best"), "diff"] == pytest.approx(-0.11)  # paired: .30 − .40, .32 − .44
    runs = pd.read_csv(written["runs.csv"]).set_index("run")
    first = runs.loc["dpo/beta=0.1,seed=0"]  # LC 30 %, raw 35 %, as fractions; counts as they are
    assert first["eval/alpaca_lc_win_rate"] == pytest.approx(0.30)
    assert first["eval/alpaca_win_rate"] == pytest.approx(0.35)
    assert (first["eval/alpaca_standard_error"], first["eval/alpaca_n_total"]) == (pytest.approx(0.015), 805)
    assert "eval/alpaca_n_wins" not in runs and "mode" not in runs  # only the known columns
    text = written["sensitivity.md"].read_text()
    assert "Score: `eval/alpaca_lc_win_rate`" in text
    assert f"Scores judged elsewhere: `eval/alpaca_lc_win_rate`, `eval/alpaca_lc_standard_error`, " in text
    assert f"(AlpacaEval win rates as fractions) from `{board}`, for 8 of 8 runs." in text
    assert f"--scores {board} --score eval/alpaca_lc_win_rate`" in text and written["score_vs_beta.png"].exists()
    again = analyze(written["runs.csv"], tmp_path / "again", score="eval/alpaca_lc_win_rate")  # from runs.csv
    assert again["sensitivity.csv"].read_text() == written["sensitivity.csv"].read_text()
    twice = analyze(written["runs.csv"], tmp_path / "twice", scores=[board], score="eval/alpaca_lc_win_rate")
    assert list(pd.read_csv(twice["runs.csv"]).columns) == list(runs.reset_index().columns)  # replaced, not added


def test_a_run_metric_value_table_names_runs_by_folder_generator_or_path(study, tmp_path):
    folder, names = study
    path = tmp_path / "judge.csv"
    path.write_text("run,metric,value\n"
                    '"dpo/beta=0.1,seed=0",mt_bench,6.5\n'                                    # its `run`
                    f"{names['dpo/beta=1.0,seed=0']},mt_bench,7.5\n"                      # its generator
                    f'"{folder.resolve() / "ipo" / "beta=1.0,seed=1"}",eval/arena_hard,0.25\n')  # its folder's path
    runs, said = attach_scores(load_runs(folder), [path], folder)
    runs = runs.set_index("run")
    assert runs.loc["dpo/beta=0.1,seed=0", "eval/mt_bench"] == 6.5
    assert runs.loc["dpo/beta=1.0,seed=0", "eval/mt_bench"] == 7.5
    assert runs["eval/mt_bench"].notna().sum() == 2 and runs.loc["ipo/beta=1.0,seed=1", "eval/arena_hard"] == 0.25
    assert said == f"`eval/mt_bench`, `eval/arena_hard` from `{path}`, for 3 of 8 runs"
    only_dpo, _, settings = load_study(folder, methods=["dpo"], scores=[path], score="eval/mt_bench")
    assert set(only_dpo["method"]) == {"dpo"} and settings.attached.endswith("for 3 of 8 runs")  # matched first


def test_rows_that_match_no_run_several_or_one_twice_are_one_line(study, tmp_path):
    folder, names = study
    runs = load_runs(folder)
    extra = leaderboard(names, tmp_path / "extra.csv", extra={"gpt4_turbo": 50.0, "Current model": 1.0})
    with pytest.raises(ValueError) as err:
        attach_scores(runs, [extra], folder)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"--scores {extra}: 2 name(s) match no run of this study: ")
    assert "gpt4_turbo, Current model (a run is named by its `run`, e.g. dpo/beta=0.1,seed=0, " in message
    board = leaderboard(names, tmp_path / "leaderboard.csv")
    with pytest.raises(ValueError, match=r"8 run\(s\) are scored twice: dpo/beta=0.1,seed=0 \(.*leaderboard.csv:\d+, "):
        attach_scores(runs, [board, board], folder)  # the same leaderboard given twice
    same = runs.assign(generator="prefopt-tiny-dpo")  # the old names: one per model and loss, not per run
    long = tmp_path / "long.csv"
    long.write_text("run,metric,value\nprefopt-tiny-dpo,lc,0.3\n")
    with pytest.raises(ValueError, match=r"1 name\(s\) match several runs: prefopt-tiny-dpo \(8 runs\)$"):
        attach_scores(same, [long], folder)


def test_a_file_in_neither_format_names_the_expected_columns(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("model,score\na,1\n")
    with pytest.raises(ValueError, match=r"expected AlpacaEval's leaderboard.csv \(the generator in its first, "
                                         r"unnamed column .* or a CSV with columns run,metric,value; it has "
                                         r"columns \['model', 'score'\]$"):
        read_scores(other)
    bad = tmp_path / "bad.csv"
    bad.write_text("run,metric,value\na,m,1\nb,m,high\n")
    with pytest.raises(ValueError, match=r"`value` is not a number on line\(s\) 3$"):
        read_scores(bad)
    unquoted = tmp_path / "unquoted.csv"
    unquoted.write_text("run,metric,value\ndpo/beta=0.1,seed=0,m,1\n")
    with pytest.raises(ValueError, match=r"more fields than the header; quote a name with commas"):
        read_scores(unquoted)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_scores(tmp_path / "missing.csv")


def test_the_cli_attaches_ranks_and_fails_in_one_line(study, tmp_path, capsys):
    folder, names = study
    cli = runpy.run_path(str(ROOT / "src" / "analyze.py"))
    board = leaderboard(names, tmp_path / "leaderboard.csv")
    assert cli["main"]([str(folder), "--out", str(tmp_path / "a"), "--scores", str(board),
                        "--score", "eval/alpaca_lc_win_rate"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("[prefopt] attached `eval/alpaca_lc_win_rate`, ")
    assert lines[0].endswith("for 8 of 8 runs")
    assert lines[1] == "judged: best eval/alpaca_lc_win_rate per method (95% t-interval over seeds)"
    assert lines[2].startswith("  dpo  0.310 [0.183, 0.437]  at beta=0.1") and lines[3].startswith("  ipo  0.420 [")
    assert cli["main"]([str(folder), "--out", str(tmp_path / "b"), "--scores", str(board)]) == 0
    assert ("the study ranks by eval/oracle_reward, not by the attached scores: pass --score <one of them>"
            in capsys.readouterr().err)
    extra = leaderboard(names, tmp_path / "extra.csv", extra={"gpt4_turbo": 50.0})
    assert cli["main"]([str(folder), "--out", str(tmp_path / "c"), "--scores", str(extra)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --scores {extra}: 1 name(s) match no run of this study: gpt4_turbo (")
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow  # wandb starts its service process
def test_the_wandb_study_run_holds_the_attached_scores(study, tmp_path, monkeypatch):
    from prefopt.analysis.wandb_study import log_study
    from wandb_records import offline_runs

    monkeypatch.setenv("WANDB_MODE", "offline")
    folder, names = study
    board = leaderboard(names, tmp_path / "leaderboard.csv")
    written = analyze(folder, tmp_path / "report", scores=[board], score="eval/alpaca_lc_win_rate")
    log_study(folder, written, scores=[board])
    (run,) = offline_runs(tmp_path / "report" / "wandb")
    assert run.config["scores"] == [str(board)] and run.history[0]["study/runs/nrows"] == 8
    table = json.loads((run.path.parent / "files" / run.history[0]["study/methods/path"]).read_text())
    best = dict(zip((r[table["columns"].index("method")] for r in table["data"]),
                    (r[table["columns"].index("best")] for r in table["data"])))
    assert best == {"dpo": pytest.approx(0.31), "ipo": pytest.approx(0.42)}  # ranked by AlpacaEval's LC win rate
    runs = json.loads((run.path.parent / "files" / run.history[0]["study/runs/path"]).read_text())
    assert "eval/alpaca_lc_win_rate" in runs["columns"]
