"""conf/tuned/<loss>_<data>.yaml: the study's settings per loss and task, picked by conf/train.yaml's
`optional tuned: ${loss}_${data}`; the command line wins, tasks without evidence keep the loss's
defaults, and the studies (conf/sweep) run without them. Also: the per-loss grids of the studies
resolve (conf/sweep/beta_sensitivity.yaml, own_knobs.yaml, imdb_sensitivity.yaml, imdb_own_knobs.yaml).

Run: `.venv/bin/python -m pytest tests/test_tuned.py -q`.
"""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
TUNED = sorted(p.stem for p in (CONF / "tuned").glob("*.yaml"))


def compose_with(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # `${hydra:runtime.choices.loss}` in the sweep configs
    return cfg


@pytest.mark.parametrize("name", TUNED)
def test_each_tuned_file_is_a_loss_and_a_task_and_composes(name):
    loss, data = name.rsplit("_", 1)  # loss configs may hold an underscore, data configs do not
    assert (CONF / "loss" / f"{loss}.yaml").exists() and (CONF / "data" / f"{data}.yaml").exists(), name
    spec = OmegaConf.load(CONF / "tuned" / f"{name}.yaml")
    own_keys = set(OmegaConf.load(CONF / "loss" / f"{loss}.yaml"))
    assert set(spec) <= {"loss", "optim", "trainer"} and set(spec.get("loss", {})) <= own_keys
    assert set(spec.get("trainer", {})) <= {"max_steps"}  # the step count a learning rate was tuned for
    cfg = compose_with(f"loss={loss}", f"data={data}")
    assert cfg.hydra.runtime.choices.tuned == name
    assert cfg.loss.get("beta") == spec.get("loss", {}).get("beta") and cfg.optim.lr == spec.optim.lr  # SimPER: no β
    if "trainer" in spec:
        assert cfg.trainer.max_steps == spec.trainer.max_steps


def test_the_sort_task_gets_the_studied_settings_and_the_command_line_wins():
    cfg = compose_with("loss=dpo", "data=sort")
    assert (cfg.loss.beta, cfg.optim.lr) == (1.0, 1.0e-4)
    cfg = compose_with("loss=dpo", "data=sort", "loss.beta=0.05", "optim.lr=3e-3")
    assert (cfg.loss.beta, cfg.optim.lr) == (0.05, 3e-3)
    cfg = compose_with("loss=rmipo", "data=sort", "~tuned")  # the loss's own defaults
    assert (cfg.loss.beta, cfg.optim.lr) == (2.0, cfg.model.lr)


def test_the_imdb_task_gets_the_studied_settings_with_their_step_count():
    cfg = compose_with("loss=rmipo", "data=imdb")  # `make run`
    assert (cfg.loss.beta, cfg.optim.lr, cfg.trainer.max_steps) == (6.0, 5.0e-4, 60)
    cfg = compose_with("loss=dpo", "data=imdb", "trainer.max_steps=200")
    assert (cfg.loss.beta, cfg.optim.lr, cfg.trainer.max_steps) == (0.1, 1.6e-3, 200)


def test_a_task_without_evidence_keeps_the_loss_defaults():
    cfg = compose_with("loss=rmipo", "data=jsonl")
    assert cfg.hydra.runtime.choices.get("tuned") == "rmipo_jsonl" and "rmipo_jsonl" not in TUNED
    assert (cfg.loss.beta, cfg.optim.lr, cfg.trainer.max_steps) == (2.0, cfg.model.lr, 200)


def test_studies_ignore_tuned_settings_and_resolve_per_loss_grids():
    cfg = compose_with("sweep=beta_sensitivity", "loss=rmipo", "sweep.beta_step=b4", "sweep.lr_step=l1")
    assert cfg.hydra.runtime.choices.get("tuned") is None
    assert (cfg.loss.beta, cfg.optim.lr) == (20.0, 1.0e-5)  # rmipo's grid, not conf/tuned/rmipo_sort.yaml
    cfg = compose_with("sweep=beta_sensitivity", "loss=dpo")  # the default positions: the middle
    assert (cfg.loss.beta, cfg.optim.lr) == (1.0, 1.0e-4)
    cfg = compose_with("sweep=own_knobs", "+sweep/knob=rmipo_g0.6-2.5_reference")
    assert (cfg.loss.beta, cfg.optim.lr, cfg.loss.gamma_min, cfg.loss.gamma_max) == (0.6, 1.0e-5, 0.6, 2.5)
    assert cfg.loss.marginal == "reference" and cfg.method == "rmipo_marginal_reference"
    cfg = compose_with("sweep=own_knobs", "+sweep/knob=simpo_margin_anneal")  # a control at RMiPO's β, lr
    assert cfg.hydra.runtime.choices.loss == "simpo_margin_anneal" and (cfg.loss.beta, cfg.optim.lr) == (0.6, 1.0e-5)
    cfg = compose_with("sweep=imdb_sensitivity", "loss=simpo", "sweep.beta_step=bm2", "sweep.lr_step=l1")
    assert cfg.hydra.runtime.choices.get("tuned") is None and cfg.sweep.price == 0.002
    assert (cfg.loss.beta, cfg.optim.lr, cfg.trainer.max_steps) == (0.02, 1.6e-4, 60)
    cfg = compose_with("sweep=imdb_own_knobs", "+sweep/knob=rmipo_shuffled")
    assert (cfg.loss.beta, cfg.optim.lr) == (6.0, 5.0e-4)  # RMiPO's best on IMDb
    cfg = compose_with("sweep=imdb_field_knobs", "+sweep/knob=rdpo_a0.6")  # R-DPO's best on IMDb, its α 0.6
    assert (cfg.loss.beta, cfg.optim.lr, cfg.loss.alpha, cfg.trainer.max_steps) == (1.0, 1.6e-3, 0.6, 60)
    assert cfg.hydra.runtime.choices.get("tuned") is None and cfg.sweep.price == 0.002


def test_the_run_names_the_tuned_settings_it_took_and_not_those_the_command_line_set():
    from prefopt.config import tuned

    cfg = compose_with("data=sort", "loss=simpo")
    taken = tuned.applied(cfg, "simpo_sort", ["data=sort", "loss=simpo"])
    assert taken == {"file": "conf/tuned/simpo_sort.yaml", "values": {"loss.beta": 0.6, "optim.lr": 1e-5}}
    assert tuned.describe(taken).startswith("tuned: conf/tuned/simpo_sort.yaml -> loss.beta 0.6, optim.lr 1e-05 (")
    cfg = compose_with("data=sort", "loss=simpo", "optim.lr=3e-4")
    assert tuned.applied(cfg, "simpo_sort", ["data=sort", "loss=simpo", "optim.lr=3e-4"])["values"] == {"loss.beta": 0.6}
    assert tuned.applied(cfg, None, []) == {}


def test_a_multirun_over_losses_at_their_own_tuned_lr_says_so_once():
    from prefopt.config.tuned import sweep_note

    assert "own tuned learning rate" in sweep_note(["data=sort", "loss=dpo,ipo,simpo,rmipo", "loss.beta=0.3,3"])
    assert sweep_note(["loss=dpo,ipo", "optim.lr=1e-4"]) is None
    assert sweep_note(["loss=dpo,ipo", "~tuned"]) is None
    assert sweep_note(["loss=dpo", "loss.beta=0.1,1"]) is None  # one loss: nothing is compared
    assert sweep_note(["sweep=beta_sensitivity"]) is None  # the studies set their own grids


@pytest.mark.parametrize("loss", ["dpo", "ipo", "simpo", "rmipo", "orpo", "cpo", "rdpo", "betadpo"])
def test_the_paper_sweep_resolves_every_grid_point_and_is_judged(loss):
    expected_lrs = [3e-7, 5e-7, 6e-7, 1e-6]
    betas = []
    for b in ("b1", "b2", "b3", "b4"):
        for position, lr in zip(("l1", "l2", "l3", "l4"), expected_lrs):
            cfg = compose_with("sweep=paper_sensitivity", "experiment=mistral7b", f"loss={loss}", "judge.path=/rm",
                               f"sweep.beta_step={b}", f"sweep.lr_step={position}")
            assert cfg.optim.lr == lr and cfg.judge.path == "/rm" and cfg.objective == "eval/judge_lc_win_rate"
        betas.append(cfg.loss.beta)
    assert betas == sorted(betas) and len(set(betas)) == 4
    assert {"dpo": 0.01, "ipo": 0.01, "simpo": 1.5, "rmipo": 1.0, "orpo": 0.1, "cpo": 0.01, "rdpo": 0.01,
            "betadpo": 0.01}[loss] == betas[0]


def test_the_paper_sweep_of_simper_resolves_its_learning_rates_and_has_no_beta():
    for position, lr in zip(("l1", "l2", "l3", "l4"), [3e-7, 5e-7, 6e-7, 1e-6]):
        cfg = compose_with("sweep=paper_sensitivity_lr", "experiment=mistral7b", "loss=simper", "judge.path=/rm",
                           f"sweep.lr_step={position}")
        assert cfg.optim.lr == lr and "beta" not in cfg.loss and cfg.sweep.name == "paper_sensitivity"
