"""Benchmark statistics (benchmarks/bench_stats.py): hand-worked t-intervals of means and paired ratios;
and the rows `benchmarks/throughput.py --json` writes; benchmarks/flops_bound.py on them."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_stats import mean_interval, ratio_interval  # noqa: E402


def test_mean_interval_hand_worked():
    # mean 2, sd 1, n 3: half width t(0.975, 2) * 1 / sqrt(3) = 4.3027 / 1.7321 = 2.4841
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert low == pytest.approx(2 - 2.4841, abs=1e-4) and high == pytest.approx(2 + 2.4841, abs=1e-4)


def test_ratio_interval_is_paired_on_the_log_scale():
    # every round twice as slow on side a, whatever the round's load: the ratio is exactly 2
    ratio, low, high = ratio_interval([2.0, 8.0, 4.0], [1.0, 4.0, 2.0])
    assert ratio == pytest.approx(2.0) and low == pytest.approx(2.0) and high == pytest.approx(2.0)
    # log ratios log 2 and log 8 (mean log 4, sd sqrt(2) log 2): exp(log 4 +- 12.706 * log 2)
    ratio, low, high = ratio_interval([2.0, 8.0], [1.0, 1.0])
    assert ratio == pytest.approx(4.0)
    assert math.log(high / ratio) == pytest.approx(12.7062 * math.log(2), rel=1e-4)
    with pytest.raises(ValueError, match="as many values"):
        ratio_interval([1.0], [1.0, 2.0])


def test_throughput_rows_keep_their_keys_and_add_the_interval_ones(tmp_path):
    """benchmarks/throughput.py --json: one short variable-length run of ours (no TRL: seconds)."""
    import json

    import throughput

    out = tmp_path / "bench.json"
    throughput.main(["--models", "tiny", "--lengths", "variable", "--losses", "simpo,simpo+pack", "--no-trl",
                     "--rounds", "3", "--steps", "1", "--warmup", "1", "--memory-steps", "1", "--json", str(out)])
    row, packed = sorted(json.loads(out.read_text()), key=lambda r: r["loss"])
    assert {"impl", "loss", "model", "pairs_per_s", "tokens_per_s", "peak_mem_mb", "lengths", "padded_share",
            "cpu_ms_per_step", "ci_low", "ci_high", "mfu", "loadavg_start"} <= set(row)
    assert (row["impl"], row["loss"], row["model"], row["lengths"]) == ("ours", "simpo", "tiny", "variable")
    assert row["ci_low"] <= row["cpu_ms_per_step"] <= row["ci_high"]
    assert 0 < row["padded_share"] < 0.6 and 0 < row["mfu"] < 1 and row["peak_mem_mb"] > 0
    # the packed layout (data.pack): rows at most 10% padding; the default rows share prompts instead
    assert packed["loss"] == "simpo+pack" and packed["packed"] and not row["packed"]
    assert (packed["layout"], row["layout"]) == ("prompt-once packed", "shared prompt")
    assert 0 <= packed["padded_share"] <= 0.10 < row["padded_share"]


def test_flops_bound_reads_the_measured_padding_and_orders_the_layouts(tmp_path):
    """benchmarks/flops_bound.py on the committed benchmark JSON: every ratio above 1, the packed layout
    (6% padding) above the shared-prompt one (21%), a cached reference above a live one; a JSON without
    the rows it needs is a named error."""
    import json

    import flops_bound

    out = flops_bound.main(["--model", "tiny"])
    assert all(v > 1 for v in out.values())
    for ref in ("live reference", "cached reference", "both references precomputed"):
        assert out[f"packed, {ref}"] > out[f"shared prompt, {ref}"]
    assert out["packed, cached reference"] > out["packed, live reference"]
    empty = tmp_path / "bench.json"
    empty.write_text(json.dumps([]))
    with pytest.raises(SystemExit, match="no trl-gpu-path dpo row for tiny/variable"):
        flops_bound.main(["--model", "tiny", "--json", str(empty)])


def test_throughput_in_bf16_mixed_clips_as_our_runs_do(tmp_path):
    """`--precision bf16-mixed` (what GPU users train in): our rows clip through the runs' callback, as
    Lightning's own clipping refuses fused AdamW under autocast."""
    import json
    import math

    import throughput

    out = tmp_path / "bench.json"
    throughput.main(["--models", "tiny", "--lengths", "fixed", "--losses", "dpo", "--no-trl", "--rounds", "3",
                     "--steps", "1", "--warmup", "1", "--memory-steps", "1", "--precision", "bf16-mixed",
                     "--json", str(out)])
    (row,) = json.loads(out.read_text())
    assert row["precision"] == "bf16-mixed" and math.isfinite(row["mean_loss"]) and 0 < row["mfu"] < 1


def test_step_profile_prints_the_op_table_and_the_synchronizing_calls(capsys):
    import step_profile

    step_profile.main(["--device", "cpu", "--model", "tiny", "--precision", "32-true", "--warmup", "1",
                       "--steps", "2", "--rows", "5"])
    out = capsys.readouterr().out
    assert "Self CPU time total" in out and "aten::" in out
    assert "synchronizing calls per step (2 steps):" in out and "(only counted on CUDA)" in out
    assert "wall time per profiled step: " in out
