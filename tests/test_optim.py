"""prefopt/train/optim.py: the optimizer and schedule come from conf/train.yaml's `optim` (`_partial_` nodes),
keep the `optim.lr`-style overrides, swap without code, and a wrong key is one line naming it."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from prefopt.errors import ConfigError
from prefopt.train.optim import optim_factories, takes

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def optim_node(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=sort", "loss=dpo", "~tuned", *overrides])
    return cfg.optim


def groups():
    w, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    return [{"params": [w]}, {"params": [b], "weight_decay": 0.0}]


def test_default_is_adamw_with_the_optim_keys_and_warmup_cosine():
    make_opt, make_sched = optim_factories(optim_node("optim.lr=0.1", "optim.weight_decay=0.01",
                                                      "optim.warmup_ratio=0.2", "optim.min_lr_ratio=0.5"))
    opt = make_opt(groups())
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["weight_decay"] == 0.01 and opt.param_groups[1]["weight_decay"] == 0.0
    assert list(opt.param_groups[0]["betas"]) == [0.9, 0.95]
    sched = make_sched(opt, total_steps=10)  # warmup int(0.2 * 10) = 2 steps, then cosine from 1 to 0.5
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.05, 0.1, 0.1])  # (step + 1) / 2, then the decay's start
    assert lrs[6] == pytest.approx(0.1 * (0.5 + 0.5 * 0.5))  # halfway through the 8 decay steps: cos = 0
    assert lrs[9] == pytest.approx(0.1 * (0.5 + 0.25 * (1 + torch.cos(torch.tensor(7 / 8 * torch.pi)).item())))


def test_another_optimizer_is_a_config_change():
    make_opt, _ = optim_factories(optim_node("optim.optimizer._target_=torch.optim.SGD", "~optim.optimizer.betas",
                                             "+optim.optimizer.momentum=0.9"))
    opt = make_opt(groups())
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    assert takes(make_opt, "fused") and not takes(make_opt, "lr")  # lr fixed by the config


def test_a_key_the_target_lacks_is_one_line_naming_it():
    with pytest.raises(ConfigError, match=r"optim.optimizer.momentum is not an argument of torch.optim.AdamW"):
        optim_factories(optim_node("+optim.optimizer.momentum=0.9"))
    node = optim_node()
    OmegaConf.update(node, "scheduler._partial_", False)
    with pytest.raises(ConfigError, match=r"optim.scheduler._partial_ must be true"):
        optim_factories(node)


@pytest.mark.parametrize("setting, devices, elsewhere, expected", [
    ("reduce-overhead", {"cuda"}, False, {"fused": True, "capturable": True}),
    ("reduce-overhead", {"cpu"}, False, {"fused": True}),  # the CPU: nothing changes
    ("reduce-overhead", {"cuda", "cpu"}, False, {"fused": True}),  # only when every parameter is on CUDA
    ("reduce-overhead", set(), False, {"fused": True}),
    ("reduce-overhead", {"cuda"}, True, {"fused": True}),  # DeepSpeed steps its own partitions
    (True, {"cuda"}, False, {"fused": True}),  # compiled without CUDA graphs: no capturable
    (False, {"cuda"}, False, {"fused": True}),
])
def test_adamw_is_capturable_only_under_cuda_graphs_on_cuda_parameters(setting, devices, elsewhere, expected):
    from prefopt.train.optim import adamw_options

    assert adamw_options(setting, True, devices, stepped_elsewhere=elsewhere) == expected
    unfused = adamw_options(setting, False, devices, stepped_elsewhere=elsewhere)
    assert unfused == {**expected, "fused": None}  # capturable does not depend on the fused kernel


def test_capturable_reaches_an_optimizer_that_takes_it_and_no_other(monkeypatch):
    """configure_optimizers passes `adamw_options`'s keywords only where the factory takes them."""
    from helpers import tiny_model
    from prefopt.losses import SimPOLoss
    from prefopt.train import module as module_file
    from prefopt.train.module import PreferenceModule

    seen = []

    def adamw(groups, lr=1e-3, fused=None, capturable=False):
        seen.append(("adamw", fused, capturable))
        return torch.optim.AdamW(groups, lr=lr)

    def sgd(groups, lr=1e-3):
        seen.append(("sgd",))
        return torch.optim.SGD(groups, lr=lr)

    calls = []
    real = module_file.adamw_options
    monkeypatch.setattr(module_file, "adamw_options", lambda *a, **k: calls.append((a[0], a[2])) or real(
        a[0], a[1], {"cuda"}, **k))  # as if every parameter were on CUDA
    for make in (adamw, sgd):
        module = PreferenceModule(tiny_model(), SimPOLoss(), optimizer=make, compile_setting="reduce-overhead")
        module._trainer = type("T", (), {"estimated_stepping_batches": 10, "strategy": object()})()
        module.configure_optimizers()
    assert seen == [("adamw", True, True), ("sgd",)]
    assert calls == [("reduce-overhead", {"cpu"})] * 2  # the settings and the parameters' devices
