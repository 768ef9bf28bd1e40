"""Every yaml under conf/ composes; CPU-runnable components instantiate; bad keys name the valid ones."""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from prefopt.config.components import ConfigError, build_component, check_keys, group_override_problems
from prefopt.losses import PreferenceLoss

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "sweep", "experiment", "tuned"))


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_with(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def resolve(cfg):
    """Resolve everything that does not need a running Hydra job."""
    cfg.hydra.runtime.cwd = str(CONF.parent)
    return OmegaConf.to_container(cfg, resolve=False)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if group == "data" and option == "jsonl":
        overrides.append("data.path=pairs.jsonl")
    cfg = compose_with(*overrides)
    assert cfg[group] is not None
    OmegaConf.resolve(OmegaConf.create({k: v for k, v in resolve(cfg).items() if k != "hydra" and k != "paths"}))


@pytest.mark.parametrize("option", options("loss"))
def test_losses_instantiate(option):
    loss = build_component(compose_with(f"loss={option}").loss, "loss")
    assert isinstance(loss, PreferenceLoss)


@pytest.mark.parametrize("option", options("data"))
def test_data_sources_check(option):
    cfg = compose_with(f"data={option}", *(["data.path=pairs.jsonl"] if option == "jsonl" else []))
    check_keys(cfg.data.source, "data.source")


def test_unknown_loss_key_names_valid_ones():
    argv = ["loss=rmipo", "loss.gamma_beta_ratio=0.5"]
    [line] = group_override_problems(argv, CONF, "loss", "rmipo")
    assert re.search(r"loss\.gamma_beta_ratio.*rmipo.*valid keys: beta, gamma_min", line)
    [line] = group_override_problems(["loss=dpo,ipo", "+loss.bogus=1"], CONF, "loss", "rmipo")
    assert re.search(r"loss\.bogus.*loss=dpo.*valid keys: beta, label_smoothing$", line)
    assert group_override_problems(["loss=dpo", "loss.beta=0.3"], CONF, "loss", "rmipo") == []  # fine
    cfg = compose_with("loss=dpo", "+loss.bogus=1")
    with pytest.raises(ConfigError, match=r"loss\.bogus.*valid keys: beta, label_smoothing"):
        build_component(cfg.loss, "loss")


def test_bad_loss_value_names_key():
    cfg = compose_with("loss=dpo", "loss.beta=-1")
    with pytest.raises(ConfigError, match=r"loss: .*beta=-1"):
        build_component(cfg.loss, "loss")


@pytest.mark.parametrize("option", options("trainer"))
def test_trainers(option):
    import lightning as L

    cfg = compose_with(f"trainer={option}").trainer
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"}
    if kwargs.get("accelerator") == "cpu":
        trainer = L.Trainer(**kwargs, logger=False)
        assert trainer.max_steps == kwargs["max_steps"]
    else:  # GPU configs: every key must be a Trainer argument, the whole config validates
        check_keys(cfg, "trainer")
        validate_full(compose_with(f"trainer={option}"))
    strategy = OmegaConf.to_container(cfg).get("strategy")
    if isinstance(strategy, dict):  # fsdp, deepspeed: Lightning's strategy object builds on CPU
        import importlib.util

        from helpers import tiny_model
        from prefopt.train.trainer_factory import build_strategy

        if strategy["name"] == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
            with pytest.raises(ConfigError, match="trainer=deepspeed needs DeepSpeed.*pip install deepspeed"):
                build_strategy(strategy, tiny_model())
        else:
            assert type(build_strategy(strategy, tiny_model())).__name__.lower().startswith(strategy["name"])


def validate_full(cfg):
    from omegaconf import open_dict

    from prefopt.config.validate import validate_config

    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.cache_dir = "/tmp/cache"
    validate_config(cfg)


@pytest.mark.parametrize("option", options("experiment"))
def test_experiments_compose_and_validate(option):
    cfg = compose_with(f"experiment={option}")
    assert cfg.data.effective_batch_size == 128 and cfg.trainer.max_epochs == 1
    validate_full(cfg)
    build_component(cfg.loss, "loss")


def test_an_overlay_picks_a_group_option_through_the_base_file_it_includes():
    """conf/sweep/paper_sensitivity.yaml picks judge=reward_model in the base file it includes
    (base/paper_study): `judge.path=` is then a setting, not an unknown key of judge=oracle."""
    assert group_override_problems(["sweep=paper_sensitivity", "judge.path=/rm"], CONF, "judge", "oracle") == []
    [line] = group_override_problems(["sweep=beta_sensitivity", "judge.path=/rm"], CONF, "judge", "oracle")
    assert "judge.path" in line and "judge=oracle" in line
