"""Bad config values and keys fail before anything loads, naming the key, the value and what is allowed."""

import pytest
from omegaconf import open_dict

from prefopt.config.components import ConfigError, build_component
from prefopt.config.validate import validate_config
from test_config import compose_with


def checked(*overrides):
    cfg = compose_with(*overrides)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.cache_dir = "/tmp/cache"
    validate_config(cfg)
    build_component(cfg.loss, "loss")
    return cfg


def test_defaults_pass():
    checked()


@pytest.mark.parametrize(
    "override,message",
    [
        ("loss.beta=0", r"beta=0 is not allowed; beta must be a number > 0"),
        ("loss.beta=-0.5", r"beta=-0.5"),
        ("loss.label_smoothing=0.5", r"label_smoothing=0.5 .*\[0, 0.5\)"),
        ("loss.gamma_min=2.0", r"gamma_max=1.6 .*>= gamma_min \(2.0\)"),
        ("loss.beta=abc", r"beta='abc'"),
        ("loss.marginal=prompt", r"marginal='prompt'.*policy.*reference"),
        ("data.max_prompt_length=4096", r"data.max_prompt_length=4096 must be below data.max_length=\d+"),
        ("optim.lr=0", r"optim.lr=0 is not allowed; it must be a number > 0"),
        ("optim.lr=-1e-4", r"optim.lr=-0.0001"),
        ("optim.lr=fast", r"optim.lr='fast'"),
        ("optim.warmup_ratio=1.5", r"optim.warmup_ratio=1.5 .*\[0, 1\)"),
        ("optim.adam_betas=[0.9]", r"optim.adam_betas=\[0.9\].*two numbers"),
        ("data.batch_size=0", r"data.batch_size=0 .*integer > 0"),
        ("data.batch_size=big", r"data.batch_size='big'"),
        ("model.dtype=float64", r"model.dtype='float64'.*bfloat16"),
        ("trainer.max_steps=0", r"trainer.max_steps=0"),
        ("seed=-1", r"seed=-1 .*integer >= 0"),
        ("share_prompt=maybe", r"share_prompt=.?maybe.? .*true, false or auto"),
        ("+data.bogus=1", r"data.bogus is not a setting of the `data` group; valid keys: name, path"),
        ("+model.bogus=1", r"model.bogus is not a setting of the `model` group"),
        ("+optim.bogus=1", r"optim.bogus is not a setting of the `optim` group; valid keys: lr"),
        ("+eval.bogus=1", r"eval.bogus is not a setting of the `eval` group"),
        ("+trainer.bogus=1", r"trainer.bogus is not a lightning.Trainer argument"),
        ("+bogus=1", r"bogus is not a setting of the top level; valid keys: seed"),
        ("+loss.bogus=1", r"loss.bogus is not a setting of the rmipo loss .*valid keys: beta"),
    ],
)
def test_bad_value_is_named(override, message):
    with pytest.raises(ConfigError, match=message):
        checked(override)


@pytest.mark.slow
def test_cli_reports_bad_value_without_traceback(cache_root, tmp_path):
    from test_run import run_cli

    proc = run_cli(["optim.lr=0", f"hydra.run.dir={tmp_path / 'r'}"], cache_root, tmp_path)
    assert proc.returncode == 1
    assert "optim.lr=0 is not allowed" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "model").exists()  # failed before anything was built or trained
