"""W&B run identity (name, group, tags, flattened config) and the CSV/none logger choices."""

from omegaconf import OmegaConf

from prefopt.loggers import flatten, make_loggers, run_identity

CFG = {
    "seed": 3,
    "tags": ["study"],
    "loss": {"_target_": "prefopt.losses.DPOLoss", "beta": 0.3, "label_smoothing": 0.0},
    "data": {"name": "sort"},
}


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_run_identity_from_loss_beta_data_seed():
    name, tags = run_identity(OmegaConf.create(CFG), "dpo", "sort")
    assert name == "dpo-beta0.3-sort-seed3"
    assert tags == ["loss:dpo", "method:dpo", "data:sort", "beta:0.3", "seed:3", "study"]
    name, tags = run_identity(OmegaConf.create(CFG), "simpo", "sort", method="simpo_margin_low")
    assert name.startswith("simpo_margin_low-") and "loss:simpo" in tags and "method:simpo_margin_low" in tags


def test_wandb_logger_gets_name_group_tags_and_flat_config(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = OmegaConf.create({**CFG, "logger": {"csv": True, "wandb": {"project": "p", "entity": None, "group": None}}})
    csv, wb = make_loggers(cfg, tmp_path, "dpo-beta0.3-sort-seed3", "sweep-1", ["loss:dpo"])
    init = wb._wandb_init
    assert init["name"] == "dpo-beta0.3-sort-seed3" and init["group"] == "sweep-1" and init["tags"] == ["loss:dpo"]
    assert init["config"]["loss.beta"] == 0.3 and init["config"]["data.name"] == "sort"
    import os

    assert wb._offline and os.environ["WANDB_MODE"] == "offline"  # offline unless WANDB_MODE says otherwise
    assert type(csv).__name__ == "CSVLogger"


def test_logger_none_gives_no_logger(tmp_path):
    cfg = OmegaConf.create({**CFG, "logger": {"csv": False, "wandb": None}})
    assert make_loggers(cfg, tmp_path, "n", "g", []) == []
