"""W&B run identity (name, group, tags, id, flattened config, hyperparameter values) and the CSV/none
logger choices, without starting W&B. What the runs write is read back in tests/test_wandb_records.py.
"""

import os

from omegaconf import OmegaConf

from prefopt.train.loggers import (
    fill_method, flatten, hyperparameters, make_loggers, run_id, run_identity, sweep_group,
)

CFG = {
    "seed": 3,
    "method": None,
    "tags": ["study"],
    "loss": {"_target_": "prefopt.losses.DPOLoss", "beta": 0.3, "label_smoothing": 0.0},
    "optim": {"lr": 1.0e-4},
    "data": {"name": "sort"},
}


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_run_identity_names_method_beta_lr_data_seed():
    name, tags = run_identity(OmegaConf.create(CFG), "dpo", "sort")
    assert name == "dpo-beta0.3-lr0.0001-sort-seed3"
    assert tags == ["loss:dpo", "method:dpo", "data:sort", "beta:0.3", "lr:0.0001", "seed:3", "study"]
    cfg = OmegaConf.create({**CFG, "optim": {"lr": 3.0e-5}})
    name, tags = run_identity(cfg, "simpo", "sort", method="simpo_margin_low")
    assert name == "simpo_margin_low-beta0.3-lr3e-05-sort-seed3"
    assert "loss:simpo" in tags and "method:simpo_margin_low" in tags and "lr:3e-05" in tags


def test_fill_method_takes_the_loss_choice_unless_set():
    cfg = OmegaConf.create(CFG)
    assert fill_method(cfg, "simpo_margin_low") == "simpo_margin_low" and cfg.method == "simpo_margin_low"
    cfg = OmegaConf.create({**CFG, "method": "mine"})
    assert fill_method(cfg, "dpo") == "mine"


def test_sweep_group_names_study_and_date():
    assert sweep_group("multirun/2026-11-30/08-35-07.002123", None) == "multirun_2026-11-30_08-35-07.002123"
    assert sweep_group("multirun/2026-11-30/08-35-07.002123", "smoke") == "smoke_2026-11-30_08-35-07.002123"
    assert sweep_group("multirun/beta_sensitivity_2026-11-30_08-35-07", "beta_sensitivity") == \
        "beta_sensitivity_2026-11-30_08-35-07"
    assert sweep_group("/data/studies/my_beta", "controls") == "my_beta"  # a folder the user named
    assert sweep_group(None, None) == "single-runs"


def test_run_id_is_fixed_by_the_run_folder(tmp_path):
    assert run_id(tmp_path / "a") == run_id(str(tmp_path / "a")) != run_id(tmp_path / "b")
    assert len(run_id(tmp_path / "a")) == 16


def test_hyperparameters_are_numeric_values():
    hp = hyperparameters(OmegaConf.create(CFG))
    assert hp == {"hp/beta": 0.3, "hp/label_smoothing": 0.0, "hp/lr": 1.0e-4, "hp/seed": 3}


def test_wandb_logger_gets_name_group_tags_id_job_type_and_flat_config(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = OmegaConf.create({**CFG, "logger": {"csv": True, "wandb": {"project": "p", "entity": None, "group": None}}})
    csv, wb = make_loggers(cfg, tmp_path, "dpo-beta0.3-lr0.0001-sort-seed3", "sweep-1", ["loss:dpo"])
    init = wb._wandb_init
    assert init["name"] == "dpo-beta0.3-lr0.0001-sort-seed3" and init["group"] == "sweep-1"
    assert init["tags"] == ["loss:dpo"] and init["job_type"] == "train"
    assert init["id"] == run_id(tmp_path) and init["resume"] == "allow"  # a retried job resumes this run
    assert "anonymous" not in init
    assert init["config"]["loss.beta"] == 0.3 and init["config"]["data.name"] == "sort"
    assert wb._offline and os.environ["WANDB_MODE"] == "offline"  # offline unless WANDB_MODE says otherwise
    assert type(csv).__name__ == "HistoryCSVLogger"  # Lightning's CSVLogger, keeping its rows across a resume


def test_logger_none_gives_no_logger(tmp_path):
    cfg = OmegaConf.create({**CFG, "logger": {"csv": False, "wandb": None}})
    assert make_loggers(cfg, tmp_path, "n", "g", []) == []
