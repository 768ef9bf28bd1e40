"""Which policy a run starts from: the one place that reads the model config against the task's needs.

The model config says what to load (`model.path`, `model.gguf` or a `model.tiny` architecture); a task
declares in `Task.needs` (a `prefopt.contracts.StartNeeds`) whether it builds its own tokenizer and SFT
start for a tiny model, whether a pretrained model can start it, and which architecture keys it sets.
`choose_start` turns the two into a `Start` (prefopt.contracts), once per run (`prefopt.config.plan`); a model the task cannot start from is one ConfigError line
naming model=..., data=... and what would work. The task's build (which receives the `Start`) and the
run (`prefopt.run.steps.start_loader`, through `prefopt.models.load.load_start`) both follow it.
Exercised by `pytest tests/tasks/test_choose.py`.
"""

from __future__ import annotations

from typing import Any, Optional

from omegaconf import OmegaConf

from prefopt.errors import ConfigError, ModelLoadError
from prefopt.contracts.task import Start, StartNeeds

PRETRAINED = ("path", "gguf")  # in order of precedence when a model config sets both


def _plain(node: Any) -> dict[str, Any]:
    return dict(OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node)


def _mismatch(model_cfg: Any, task: Any, pretrained: Optional[str]) -> str:
    """The one line for a model config the task cannot start from."""
    needs = task.needs
    got = f"got model={model_cfg.get('name')!r}"
    if pretrained:
        got += f" with model.{pretrained}={model_cfg.get(pretrained)} set (a start data={task.name} cannot use)"
    builds = "trains its own policy from scratch and " if needs.builds_start else ""
    return (f"data={task.name} {builds}needs a model config with a `tiny` architecture block (model=tiny); "
            f"{got}. {needs.instead}").rstrip()


def choose_start(model_cfg: Any, task: Any = None) -> Start:
    """The starting policy of a run with `model_cfg` on `task` (None: the model config alone).

    A pretrained model (`model.path` before `model.gguf`) where the task takes one; else a tiny
    architecture: the task's own SFT start where it builds one, a fresh tiny model otherwise. No model
    config (a task built from Python) is the task's own start at its own settings."""
    needs = getattr(task, "needs", None) or StartNeeds()
    if model_cfg is None:
        if not needs.builds_start:
            raise ConfigError("no model config: this data source starts from the model config's policy")
        return Start("task", dict(needs.architecture))
    pretrained = next((key for key in PRETRAINED if model_cfg.get(key)), None)
    tiny = model_cfg.get("tiny")
    if pretrained and needs.takes_pretrained:
        return Start(pretrained)
    if tiny and not pretrained:
        return Start("task" if needs.builds_start else "tiny", {**_plain(tiny), **needs.architecture})
    if needs.takes_pretrained:  # neither a pretrained model nor a tiny architecture
        raise ModelLoadError("The model config sets none of model.path, model.gguf or model.tiny.")
    raise ConfigError(_mismatch(model_cfg, task, pretrained))
