"""The one schema (prefopt/config/schema.py): every problem of a config in one message, one line each;
each field's type and range in words; the yaml options fit their schemas; the command-line
precheck (src/run.py) reads the default loss from conf/train.yaml and names every unknown key at once."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from prefopt.config.components import ConfigError, default_option, group_override_problems
from prefopt.config.schema import (CheckpointSchema, DataSchema, GROUPS, LoggerSchema, ModelSchema, OptimSchema,
                                   RunSchema, accepts, describe, spec_of)
from prefopt.config.validate import config_problems, override_problems, validate_config
from test_config import compose_with

CONF = Path(__file__).resolve().parents[1] / "conf"


def problems_of(*overrides):
    cfg = compose_with(*overrides)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.cache_dir = "/tmp/cache"
    return cfg, config_problems(cfg)


def test_mistakes_in_three_groups_are_reported_together_one_line_each():
    cfg, _ = problems_of("optim.lr=0", "data.batch_size=big", "loss.beta=0")
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value).splitlines() == [
        "3 problems in the config:",
        "  data.batch_size='big' is not allowed; it must be an integer > 0",
        "  optim.lr=0 is not allowed; it must be a number > 0",
        "  loss: RMiPOLoss: beta=0 is not allowed; beta must be a number > 0",
    ]


def test_unset_values_unknown_keys_and_the_trainer_come_together():
    _, problems = problems_of("data=jsonl", "+model.bogus=1", "+loss.foo=1", "+loss.bar=2", "trainer.max_steps=0",
                              "+trainer.bogus=1")
    assert problems[0] == "data.path is required and has no value: add data.path=... to the command"
    assert problems[1].startswith("model.bogus is not a setting of the `model` group; valid keys: name, path, lr,")
    assert problems[2].startswith("trainer.bogus is not a lightning.Trainer argument")
    assert problems[3] == "trainer.max_steps=0 is not allowed; it must be an integer > 0 (or -1: epochs)"
    assert [p.split(" is not")[0] for p in problems[4:]] == ["loss.foo", "loss.bar"]  # data.source: unset path,
    assert len(problems) == 6                                                        # so not built


def test_one_problem_is_one_line():
    cfg, _ = problems_of("checkpoint.keep=0")
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value) == "checkpoint.keep=0 is not allowed; it must be an integer > 0, or -1 to keep all"


@pytest.mark.parametrize("schema,key,words", [
    (RunSchema, "seed", "an integer >= 0"),
    (RunSchema, "tags", "a list of strings"),
    (RunSchema, "method", "a string or null"),
    (RunSchema, "share_prompt", "true, false or auto"),
    (RunSchema, "data", "a mapping or null"),
    (DataSchema, "effective_batch_size", "an integer > 0 or null"),
    (ModelSchema, "dtype", "one of float32, float16, bfloat16"),
    (OptimSchema, "adam_betas", "two numbers in [0, 1)"),
    (OptimSchema, "warmup_ratio", "a number in [0, 1)"),
    (OptimSchema, "min_lr_ratio", "a number in [0, 1]"),
    (OptimSchema, "weight_decay", "a number >= 0"),
    (CheckpointSchema, "keep", "an integer > 0, or -1 to keep all"),
    (LoggerSchema, "csv", "true or false"),
])
def test_each_field_says_what_it_allows(schema, key, words):
    assert describe(spec_of(schema, key)) == words


@pytest.mark.parametrize("schema,key,good,bad", [
    (DataSchema, "batch_size", [1, 64], [0, -1, True, 2.0, "8", None]),
    (DataSchema, "max_tokens_per_batch", [None, 4096], [0, False]),
    (OptimSchema, "lr", [1e-4, 1], [0, -1e-4, float("nan"), float("inf"), "fast", True]),
    (OptimSchema, "adam_betas", [[0.9, 0.95], [0, 0.5]], [[0.9], [0.9, 1.0], [0.9, -0.1], (0.9, 0.95), [0.9, "a"]]),
    (OptimSchema, "min_lr_ratio", [0, 1, 0.5], [1.01, -0.01]),
    (RunSchema, "share_prompt", [True, False, "auto"], [1, 0, "maybe", None]),
    (DataSchema, "pack", [True, False, "auto"], [1, "maybe", None]),
    (RunSchema, "tags", [[], ["a", "b"]], [[1], "a", None]),
    (ModelSchema, "dtype", ["bfloat16"], ["float64", None]),
    (CheckpointSchema, "keep", [-1, 1, 5], [0, -2, 1.5]),
])
def test_types_and_ranges_are_checked(schema, key, good, bad):
    spec = spec_of(schema, key)
    assert [accepts(spec, v) for v in good] == [True] * len(good)
    assert [accepts(spec, v) for v in bad] == [False] * len(bad)


def _yaml_options(group):
    return sorted((CONF / group).glob("*.yaml"))


def _without(node, *keys):
    with open_dict(node):
        for key in keys:
            node.pop(key, None)
    return node


def test_every_yaml_option_fits_its_schema():
    """A key a yaml adds that its schema lacks, or a value of the wrong type, would fail these merges
    (OmegaConf's own structured-config check); a data config is merged over the base it extends."""
    bases = {"data": [OmegaConf.load(CONF / "data" / "base" / "keys.yaml")]}
    for group in ("data", "model", "logger"):
        schema = OmegaConf.structured(GROUPS[group])
        for path in _yaml_options(group):
            OmegaConf.merge(schema, *bases.get(group, []), _without(OmegaConf.load(path), "defaults"))
    OmegaConf.merge(OmegaConf.structured(GROUPS[""]), _without(OmegaConf.load(CONF / "train.yaml"), "defaults", "hydra"))


def test_every_schema_key_is_set_by_some_yaml():
    """No dead declarations: each schema field appears in train.yaml, a group option, or an experiment."""
    texts = "\n".join(p.read_text() for p in CONF.rglob("*.yaml"))
    for schema in GROUPS.values():
        for key in schema.__dataclass_fields__:
            assert f"{key}:" in texts, f"{schema.__name__}.{key} is declared but no yaml sets it"


def test_the_default_loss_is_read_from_train_yaml():
    assert default_option(CONF, "loss") == compose_with().hydra.runtime.choices.loss == "rmipo"
    assert default_option(CONF, "data") == "imdb" and default_option(CONF, "nothing") is None
    [line] = group_override_problems(["loss.gamma_beta_ratio=0.5"], CONF, "loss")
    assert line.startswith("loss.gamma_beta_ratio is not a setting of loss=rmipo; valid keys: beta")


def test_command_line_unknown_keys_are_named_together():
    argv = ["loss=dpo,ipo", "+loss.bogus=1", "data=jsonl", "data.bogus=1", "+optim.foo=2", "optim.lr=1e-4,3e-4",
            "model.tiny.hidden_size=32", "hydra/launcher=basic", "hydra.run.dir=x", "experiment=mistral7b",
            "seed=0,1", "~optim.optimizer.betas", "bogus=1", "data.source.max_rows=10", "checkpoint.foo=1"]
    found = group_override_problems(argv, CONF, "loss") + override_problems(argv, CONF)
    assert [p.split(" is not")[0] for p in found] == ["loss.bogus", "data.bogus", "optim.foo", "bogus", "checkpoint.foo"]
    assert found[0] == "loss.bogus is not a setting of loss=dpo; valid keys: beta, label_smoothing"
    assert found[3].startswith("bogus is not a setting of the top level; valid keys: seed, threads")


@pytest.mark.slow
def test_cli_reports_every_unknown_key_at_once(cache_root, tmp_path):
    from test_run import run_cli

    proc = run_cli(["+loss.bogus=1", "data.bogus=1", "+optim.foo=2", f"hydra.run.dir={tmp_path / 'r'}"],
                   cache_root, tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "error: 3 problems in the config:"
    assert [line.split(" is not")[0] for line in lines[1:]] == ["  loss.bogus", "  data.bogus", "  optim.foo"]
    assert not (tmp_path / "r").exists()  # stopped before Hydra made the run folder
