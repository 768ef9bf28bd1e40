"""The run plan: what a run is made of, decided and constructed once, before anything heavy loads.

`plan(cfg)` validates the composed config by constructing its components (`prefopt.config.validate`:
the loss, the task source, the optimizer and scheduler factories), chooses the starting policy
(`prefopt.models.choose.choose_start`, a `model.path` checked reachable), builds and checks the judge
(`prefopt.eval.judge`), decides the resume once (`prefopt.train.resume.resume_decision`: the checkpoint
`ckpt_path` names and the data pin it records), chooses the layouts the batches are built in
(`prefopt.scoring.layout.choose_layout`, from `data.pack`, `share_prompt` and `data.token_buckets`), and returns them in a
frozen `RunPlan`. The steps of `prefopt.run.steps` take the plan and construct or decide none of these
again; the task's `build` receives `plan.start`, the collator and the module `plan.layout`, the fit and
the run record `plan.ckpt_path` and `plan.pin`. `prefopt.run.runner.run` validates first
(`validate_config`, whose constructed components it hands over as `built`), sets up the cache
(`preflight`), then calls `plan`. A resume whose checkpoint pins the file source's rows constructs the
source once more, with the pin.
Exercised by `pytest tests/test_plan.py tests/tasks/test_choose.py tests/test_judge.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig

from prefopt.config.components import build_component
from prefopt.scoring.buckets import token_buckets
from prefopt.scoring.layout import LayoutChoice, choose_layout


@dataclass(frozen=True)
class RunPlan:
    """A run's components, each constructed once (see the module docstring).

    loss: the `PreferenceLoss` of `cfg.loss`. source: the `Task` of `cfg.data.source` (with the resume
    checkpoint's `pin`, when it records one). optimizer, scheduler: the factories of `cfg.optim`.
    start: the chosen `Start`. judge: the evaluation's judge (conf/judge/; the oracle for older configs).
    ckpt_path: the checkpoint the fit resumes (None: a fresh start). pin: its recorded data settings.
    layout: the layouts the pair batches are built in and scored on (a `LayoutChoice`).
    """

    loss: Any
    source: Any
    optimizer: Callable
    scheduler: Callable
    start: Any
    judge: Any
    ckpt_path: Optional[str] = None
    pin: Optional[dict[str, Any]] = None
    layout: LayoutChoice = LayoutChoice()

    @property
    def optim(self) -> tuple[Callable, Callable]:
        return self.optimizer, self.scheduler


def starting_choice(cfg: DictConfig, source: Any) -> Any:
    """Which policy the run starts from: `prefopt.models.choose.choose_start` reads the model config against
    the task's `needs`. A model the task cannot start from stops here, in one line naming model= and data=,
    before anything is built or loaded."""
    from prefopt.models.choose import choose_start
    from prefopt.models.load import check_reachable

    start = choose_start(cfg.model, source)
    if start.kind == "path":  # a model that cannot be loaded stops before the task builds its data
        check_reachable(str(cfg.model.path))
    if start.kind == "tiny":  # a user's data on model=tiny: nothing pretrained, said before it trains
        from prefopt.log import get_logger

        get_logger().warning(f"warning: model={cfg.model.get('name', 'tiny')} on data={cfg.data.name} starts from "
                             "random weights (a fresh tiny model and a tokenizer trained on the data's text, no "
                             "pretraining or SFT); for a pretrained start use model=smollm2_135m or "
                             "model.path=<a Hugging Face folder>")
    return start


def eval_judge(cfg: DictConfig) -> Any:
    """The evaluation's judge (conf/judge/: oracle, reward_model, none), built and checked before the task
    builds its data: a judge.path that does not exist, is no sequence-classification model, has several
    outputs without judge.output_index or holds no tokenizer stops here in one line (config.json and the
    tokenizer are read, not weights). A config without `judge` (older runs) has the oracle."""
    from prefopt.eval.judge import OracleJudge

    judge = build_component(cfg.judge, "judge") if cfg.get("judge") is not None else OracleJudge()
    judge.check()
    return judge


def plan(cfg: DictConfig, output_dir: Optional[Path] = None, built: Optional[dict[str, Any]] = None) -> RunPlan:
    """The `RunPlan` of `cfg` run in `output_dir` (default: the working folder, where `ckpt_path=last` looks):
    validated (`validate_config`, unless its constructed components are handed over as `built`), the resume
    decided (a checkpoint's pin rebuilds the source), the start chosen, the judge checked, the layouts chosen."""
    from prefopt.config.validate import validate_config
    from prefopt.train.optim import optim_factories
    from prefopt.train.resume import resume_decision

    built = validate_config(cfg) if built is None else built
    loss = built["loss"] if "loss" in built else build_component(cfg.loss, "loss")
    source = built["data.source"] if "data.source" in built else build_component(cfg.data.source, "data.source")
    optimizer, scheduler = built["optim"] if "optim" in built else optim_factories(cfg.optim)
    ckpt_path, pin = resume_decision(cfg.get("ckpt_path"), Path(output_dir or "."))  # before anything loads
    start = starting_choice(cfg, source)  # the task's own SFT start, model.path, model.gguf or a tiny model
    judge = eval_judge(cfg)  # conf/judge/: a judge.path that cannot work stops before the task builds
    if pin:
        source = build_component(cfg.data.source, "data.source", **pin)
    buckets = token_buckets(cfg.data.get("token_buckets", "auto"), cfg.model.get("compile", False),
                            cfg.data.get("max_length"))
    layout = choose_layout(cfg.data.get("pack", False), cfg.get("share_prompt", "auto"), cfg.trainer, buckets)
    return RunPlan(loss=loss, source=source, optimizer=optimizer, scheduler=scheduler, start=start, judge=judge,
                   ckpt_path=ckpt_path, pin=pin, layout=layout)
