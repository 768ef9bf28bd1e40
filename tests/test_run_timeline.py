"""benchmarks/run_timeline.py: each wrapped call's wall time is added to its key (exceptions too), and the
report lists the keys largest first without the zeros."""

import runpy
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

TIMELINE = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "run_timeline.py"))


def test_timed_adds_each_call_and_keeps_the_result():
    totals = defaultdict(float)
    owner = SimpleNamespace(step=lambda seconds: time.sleep(seconds) or seconds)
    TIMELINE["timed"](owner, "step", totals)
    assert owner.step(0.02) == 0.02 and owner.step(0.03) == 0.03
    assert 0.05 <= totals["step"] < 0.5


def test_timed_counts_a_failing_call_under_its_own_key():
    totals = defaultdict(float)

    def fail():
        time.sleep(0.01)
        raise ValueError("bad")

    owner = SimpleNamespace(fail=fail)
    TIMELINE["timed"](owner, "fail", totals, key="fit:validation")
    with pytest.raises(ValueError, match="bad"):
        owner.fail()
    assert totals["fit:validation"] >= 0.01 and "fail" not in totals


def test_report_orders_largest_first_and_drops_zeros():
    assert TIMELINE["report"]({"fit": 4.43, "total": 6.47, "log_and_save": 0.001, "oracle_evaluation": 0.26}) == \
        "TIMES total=6.47 fit=4.43 oracle_evaluation=0.26"
