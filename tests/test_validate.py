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


# ---- values allowed but far from the usual: a warning line at the start (issue 26) ----------------------
@pytest.mark.parametrize("overrides,line", [
    (["loss=dpo", "loss.beta=1e9"], "loss.beta=1e+09 is outside the usual range of DPOLoss (0.01 to 1)"),
    (["loss=dpo", "loss.beta=1e-9"], "loss.beta=1e-09 is outside the usual range of DPOLoss (0.01 to 1)"),
    (["loss=simpo", "loss.beta=50"], "loss.beta=50 is outside the usual range of SimPOLoss (0.01 to 10)"),
    (["loss=rmipo", "loss.beta=0.05"], "loss.beta=0.05 is outside the usual range of RMiPOLoss (0.2 to 20)"),
    (["optim.lr=1e3"], "optim.lr=1000 is outside the usual range of this setting (1e-08 to 0.01)"),
    (["optim.lr=1e-9"], "optim.lr=1e-09 is outside the usual range of this setting (1e-08 to 0.01)"),
])
def test_a_value_far_from_the_usual_is_a_warning_not_an_error(overrides, line, capsys):
    checked(*overrides)  # runs
    err = capsys.readouterr().err
    assert f"[prefopt] warning: {line}; the run goes on" in err
    assert err.count("warning:") == 1


@pytest.mark.parametrize("loss", ["dpo", "ipo", "simpo", "rmipo", "simpo_margin_anneal", "rmipo_shuffled"])
@pytest.mark.parametrize("data", ["sort", "imdb"])
def test_the_shipped_and_tuned_settings_give_no_warning(loss, data):
    from prefopt.config.validate import advice

    assert advice(checked(f"loss={loss}", f"data={data}")) == []  # with conf/tuned/<loss>_<data>.yaml
    assert advice(checked(f"loss={loss}", f"data={data}", "~tuned")) == []  # the losses' own defaults


# ---- the command line: every problem in one message (issue 26) ------------------------------------------
THREE = ["los=dpo", "optim.lr=0", "data.batch_size=-3"]


def test_unknown_key_and_bad_values_are_named_together():
    from prefopt.config.validate import precheck_problems
    from test_config import CONF

    found = precheck_problems(THREE, CONF)
    assert [p.split(" ")[0] for p in found] == ["los", "data.batch_size=-3", "optim.lr=0"]
    assert found[0].startswith("los is not a setting of the top level; valid keys: seed")
    assert found[1] == "data.batch_size=-3 is not allowed; it must be an integer > 0"
    assert found[2] == "optim.lr=0 is not allowed; it must be a number > 0"


def test_once_the_rest_composes_the_loss_and_trainer_values_join_the_message():
    from prefopt.config.validate import precheck_problems
    from test_config import CONF

    found = precheck_problems(["loss=dpoo", "+optim.foo=1", "loss.beta=-1", "trainer.max_steps=0"], CONF)
    assert found[0].startswith("loss=dpoo is not a config of the `loss` group; available: betadpo, cpo, dpo, ipo, orpo")
    assert found[1].startswith("optim.foo is not a setting of the `optim` group")
    assert "trainer.max_steps=0 is not allowed" in found[2] and "beta=-1 is not allowed" in found[3]
    assert len(found) == 4
    assert precheck_problems(["loss=dpo", "loss.beta=0.2", "optim.lr=1e-4", "~tuned"], CONF) == []


def test_a_sweep_is_checked_value_by_value():
    from prefopt.config.validate import precheck_problems
    from test_config import CONF

    found = precheck_problems(["-m", "loss=dpo,ipo", "los=1", "optim.lr=1e-4,0", "seed=0,1"], CONF)
    assert [p.split(" ")[0] for p in found] == ["los", "optim.lr=0"]


@pytest.mark.slow
def test_cli_names_all_three_problems_in_one_message(cache_root, tmp_path):
    from test_run import run_cli

    proc = run_cli([*THREE, f"hydra.run.dir={tmp_path / 'r'}"], cache_root, tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "error: 3 problems in the config:"
    assert [line.split(" ")[2] for line in lines[1:]] == ["los", "data.batch_size=-3", "optim.lr=0"]
    assert not (tmp_path / "r").exists()  # stopped before Hydra made the run folder
