"""The run plan (prefopt.config.plan): validation constructs the loss, the task source and the optimizer
factories once, the plan keeps them, the start is chosen once and the task's build receives it; a tiny
run in a subprocess counts the constructor calls."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from prefopt.config import RunPlan, plan
from prefopt.models.choose import Start

ROOT = Path(__file__).resolve().parents[1]

COUNTING_RUN = textwrap.dedent("""
    import collections, functools, json, runpy, sys
    sys.path.insert(0, {src!r})
    from prefopt.losses.dpo import DPOLoss
    from prefopt.models import choose
    from prefopt.tasks.sort import SortTask
    from prefopt.train import optim

    calls = collections.Counter()

    def counted(name, function):
        @functools.wraps(function)  # the same signature: constructors' keys are read from it
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    DPOLoss.__init__ = counted("loss", DPOLoss.__init__)
    SortTask.__init__ = counted("source", SortTask.__init__)
    SortTask.build = counted("build", SortTask.build)
    optim.optim_factories = counted("optim", optim.optim_factories)
    choose.choose_start = counted("choose_start", choose.choose_start)
    sys.argv = ["run.py", *{args!r}]
    try:
        runpy.run_path({run!r}, run_name="__main__")
    except SystemExit as stop:
        assert not stop.code, stop.code
    finally:
        with open({out!r}, "w") as fh:
            json.dump(calls, fh)
""")


def compose_sort(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=["data=sort", "loss=dpo", *overrides])


def test_plan_keeps_what_validation_built_and_is_frozen():
    run_plan = plan(compose_sort())
    assert isinstance(run_plan, RunPlan) and type(run_plan.loss).__name__ == "DPOLoss"
    assert type(run_plan.source).__name__ == "SortTask" and run_plan.start.kind == "task"
    assert isinstance(run_plan.start, Start) and run_plan.ckpt_path is None and run_plan.pin is None
    assert run_plan.optim == (run_plan.optimizer, run_plan.scheduler)
    with pytest.raises(Exception):
        run_plan.loss = None  # frozen


@pytest.mark.slow
def test_a_run_constructs_each_component_once(cache_root, tmp_path):
    out = tmp_path / "calls.json"
    args = ["data=sort", "loss=dpo", "~tuned", "data.source.n_sft=3000", "data.source.sft_steps=150",
            "data.source.n_pair_prompts=300", "data.source.n_eval_prompts=48", "trainer.max_steps=3",
            f"hydra.run.dir={tmp_path / 'run'}"]
    script = COUNTING_RUN.format(src=str(ROOT / "src"), args=args, run=str(ROOT / "src" / "run.py"), out=str(out))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PREFOPT_CACHE": str(cache_root)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = json.loads(out.read_text())
    assert calls == {"loss": 1, "source": 1, "build": 1, "optim": 1, "choose_start": 1}, calls
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "completed"


def test_the_plan_chooses_the_layouts_once():
    from prefopt.scoring.layout import LayoutChoice
    from prefopt.scoring.packed import PACKED
    from prefopt.scoring.rows import ROWS
    from prefopt.scoring.shared import SHARED
    from prefopt.scoring.tree import TREE

    assert plan(compose_sort()).layout == LayoutChoice(pack=False, share_prompt="auto")  # trainer=cpu: no packing
    packed = plan(compose_sort("data.pack=true", "share_prompt=false")).layout
    assert packed == LayoutChoice(pack=True, share_prompt=False) and packed.layouts == (TREE, PACKED, ROWS)
    assert plan(compose_sort()).layout.layouts == (SHARED, ROWS)


def test_the_plan_decides_the_resume(tmp_path):
    from prefopt.errors import ResumeMismatch

    with pytest.raises(ResumeMismatch, match=r"ckpt_path=last: .*has no readable checkpoint"):
        plan(compose_sort("ckpt_path=last"), tmp_path)
    fresh = plan(compose_sort("ckpt_path=last_or_fresh"), tmp_path)
    assert fresh.ckpt_path is None and fresh.pin is None
