"""benchmarks/throughput.py's compiled rows of ours: `+compile` (model.compile=true) and `+graphs`
(reduce-overhead) parse to the run's settings, `+graphs` without CUDA is a skipped row with its reason,
TRL's rows are held against our fastest fair row, and a `+compile` row trains to the eager row's loss with
its compile time reported apart from the timed steps (the one compiling test: ~30 s of inductor on the CPU)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import throughput  # noqa: E402

SHORT = ["--models", "tiny", "--lengths", "fixed", "--no-trl", "--rounds", "3", "--steps", "1", "--warmup", "1",
         "--memory-from-timed"]


def test_compiled_variants_parse_to_the_runs_settings():
    expected = {"dpo+compile": True, "simpo+compile": True, "dpo+cache+compile": True,
                "dpo+graphs": "reduce-overhead", "simpo+graphs": "reduce-overhead",
                "dpo+cache+graphs": "reduce-overhead", "dpo": False, "dpo+cache+pack": False}
    for name, setting in expected.items():
        assert throughput.compile_setting(name) == setting
    assert set(expected) - {"dpo"} <= set(throughput.OURS)
    assert throughput.base_loss("dpo+cache+compile") == "dpo" and throughput.base_loss("simpo-rows") == "simpo"
    assert type(throughput.our_loss("simpo+graphs")).__name__ == "SimPOLoss"


def test_graphs_without_cuda_is_a_skipped_row_with_its_reason(tmp_path, capsys):
    out = tmp_path / "b.json"
    rows = throughput.main([*SHORT, "--losses", "dpo+graphs", "--json", str(out)])
    (row,) = json.loads(out.read_text())
    assert row == rows[0] and (row["impl"], row["loss"], row["device"]) == ("ours", "dpo+graphs", "cpu")
    assert "CUDA only" in row["skipped"] and "reduce-overhead" in row["skipped"]
    assert "skipped ours dpo+graphs: model.compile=reduce-overhead" in capsys.readouterr().out
    assert throughput.skip_reason("dpo+graphs", "cuda") is None and throughput.skip_reason("dpo+compile", "cpu") is None


def test_compiled_rows_need_a_warmup_step():
    with pytest.raises(SystemExit, match="--warmup >= 1"):
        throughput.main([*SHORT[:-3], "--warmup", "0", "--losses", "dpo+compile"])


def _rounds(times: dict[tuple[str, str], float]) -> dict:
    """Three rounds per configuration, each step `time` in CPU and wall time."""
    return {c: [([t * k], [t * k]) for k in (1.0, 1.1, 0.9)] for c, t in times.items()}


def test_trl_best_is_held_against_our_fastest_row_that_ran():
    rounds = _rounds({("ours", "dpo+compile"): 2.0, ("ours", "dpo+graphs"): 1.0, ("ours", "dpo+cache+compile"): 0.5,
                      ("trl-best", "dpo"): 4.0, ("trl", "dpo"): 4.0})
    mem = dict.fromkeys(rounds, 1.0)
    best, plain = {"impl": "trl-best", "loss": "dpo"}, {"impl": "trl", "loss": "dpo"}
    throughput.compare(best, rounds, mem, 0)
    throughput.compare(plain, rounds, mem, 0)
    # trl-best precomputes its reference: every dpo row of ours is fair; neither dpo+cache nor dpo ran
    assert best["vs_ours"] == best["best_ours"] == "dpo+cache+compile" and best["speedup"] == pytest.approx(8.0)
    assert set(best["speedup_vs"]) == {"dpo+compile", "dpo+graphs"}
    # TRL without a precomputed reference: our cached rows are not held against it
    assert plain["vs_ours"] == plain["best_ours"] == "dpo+graphs" and plain["speedup_best"][0] == pytest.approx(4.0)
    assert set(plain["speedup_vs"]) == {"dpo+compile"}


def test_compiled_row_trains_to_the_eager_loss_and_reports_its_compile_time(tmp_path, capsys):
    out = tmp_path / "b.json"
    throughput.main([*SHORT, "--losses", "dpo,dpo+compile", "--json", str(out)])
    eager, compiled = sorted(json.loads(out.read_text()), key=lambda r: r["loss"])
    assert compiled["loss"] == "dpo+compile" and compiled["compile_setting"] is True
    assert compiled["mean_loss"] == pytest.approx(eager["mean_loss"], abs=1e-5)
    assert compiled["compile_first_step_s"] > compiled["compile_second_step_s"] > 0
    assert compiled["compile_s"] > 0 and compiled["compiled_graphs"] >= 1
    assert compiled["graphs_after_warmup"] >= 0 and "compile_s" not in eager and compiled["rounds"] == 3
    assert "(model.compile=true): first step" in capsys.readouterr().out  # the console says it too
