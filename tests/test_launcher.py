"""The SLURM launcher asks for what Lightning expects: conf/hydra/launcher/submitit_slurm.yaml takes tasks
and GPUs per node from trainer.devices and nodes from trainer.num_nodes (prefopt/config/launcher.py); the
sbatch script submitit would write says so, and Lightning's SLURM environment accepts the variables
SLURM then sets (and rejects the plugin's old default of one task)."""

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf

from prefopt.errors import ConfigError
from prefopt.config.launcher import devices_per_node, gpus_per_node, register

ROOT = Path(__file__).resolve().parents[1]
STUDY = ["hydra/launcher=submitit_slurm", "experiment=mistral7b", "trainer=fsdp", "trainer.devices=8"]


def launcher_cfg(overrides):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    return cfg, cfg.hydra.launcher


def sbatch_text(launcher_node, tmp_path, monkeypatch) -> str:
    """The sbatch script submitit writes for these launcher settings (a stub `srun` on PATH)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    params = dict(instantiate(launcher_node).params)  # what SlurmLauncher.launch starts from
    executor = submitit.AutoExecutor(cluster="slurm", folder=str(tmp_path / "submitit"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())  # the same key mapping as SlurmLauncher.launch
    skip = {"submitit_folder", "max_num_timeout"}
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in skip})
    return executor._executor._make_submission_file_text("python src/run.py", "uid")


def test_tasks_and_gpus_per_node_follow_trainer_devices():
    cfg, launcher = launcher_cfg(STUDY)
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (8, 8, 1)
    assert cfg.model.name == "mistral7b" and cfg.trainer.strategy.name == "fsdp"
    _, launcher = launcher_cfg([*STUDY[:-1], "trainer.devices=4", "+trainer.num_nodes=2"])
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    _, launcher = launcher_cfg(["hydra/launcher=submitit_slurm", "trainer=ddp", "trainer.accelerator=cpu",
                                "trainer.devices=2"])
    assert (launcher.tasks_per_node, launcher.gpus_per_node) == (2, None)  # CPU processes reserve no GPU


@pytest.mark.slow
def test_sbatch_script_asks_for_one_task_per_gpu(tmp_path, monkeypatch):
    _, launcher = launcher_cfg([*STUDY, "hydra.launcher.partition=gpu", "hydra.launcher.cpus_per_task=8",
                                "hydra.launcher.mem_gb=400"])
    text = sbatch_text(launcher, tmp_path, monkeypatch)
    for line in ("--ntasks-per-node=8", "--gpus-per-node=8", "--nodes=1", "--cpus-per-task=8", "--mem=400GB",
                 "--partition=gpu", "--time=600"):
        assert f"#SBATCH {line}\n" in text, line
    assert "\nsrun " in text  # one process per task, as Lightning's SLURM environment expects


def slurm_env(monkeypatch, tasks_per_node: int, nodes: int) -> None:
    """The variables srun sets for task 0 of a job with these settings."""
    for key, value in {"SLURM_NTASKS": tasks_per_node * nodes, "SLURM_NTASKS_PER_NODE": tasks_per_node,
                       "SLURM_NNODES": nodes, "SLURM_JOB_NAME": "run", "SLURM_PROCID": 0, "SLURM_LOCALID": 0,
                       "SLURM_NODEID": 0, "SLURM_NODELIST": "gpu-node-1", "SLURM_JOB_ID": 1234}.items():
        monkeypatch.setenv(key, str(value))


def slurm_trainer(devices: int, nodes: int) -> L.Trainer:
    """A DDP Trainer as a job builds it (on CPU here), after the check Lightning makes when fit launches."""
    trainer = L.Trainer(accelerator="cpu", devices=devices, num_nodes=nodes, strategy="ddp", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    launcher = trainer.strategy.launcher  # _SubprocessScriptLauncher.launch starts with exactly this call
    launcher.cluster_environment.validate_settings(num_devices=launcher.num_processes, num_nodes=launcher.num_nodes)
    return trainer


def test_lightning_slurm_environment_accepts_the_composed_request(monkeypatch):
    cfg, launcher = launcher_cfg(STUDY)
    slurm_env(monkeypatch, launcher.tasks_per_node, launcher.nodes)
    SLURMEnvironment._validate_srun_variables()
    trainer = slurm_trainer(cfg.trainer.devices, launcher.nodes)
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert trainer.world_size == 8 and trainer.num_devices == 8
    cfg, launcher = launcher_cfg([*STUDY, "+trainer.num_nodes=2"])
    slurm_env(monkeypatch, launcher.tasks_per_node, launcher.nodes)
    assert slurm_trainer(cfg.trainer.devices, cfg.trainer.num_nodes).world_size == 16


def test_lightning_rejects_the_plugins_old_one_task_default(monkeypatch):
    slurm_env(monkeypatch, tasks_per_node=1, nodes=1)  # hydra-submitit-launcher's tasks_per_node: 1
    with pytest.raises(ValueError, match=r"devices=8.*--ntasks-per-node=1"):
        slurm_trainer(8, 1)


def test_devices_per_node_counts_lists_and_rejects_every_visible_device():
    assert devices_per_node(8) == 8 and devices_per_node("4") == 4
    assert devices_per_node([0, 1, 2]) == 3 and devices_per_node("0,1") == 2
    assert gpus_per_node(8, "gpu") == 8 and gpus_per_node(2, "cpu") is None
    for devices in (-1, "auto", 0):
        with pytest.raises(ConfigError, match=r"set it to the GPUs per node, e.g. trainer.devices=8"):
            devices_per_node(devices)


def run_cli(args, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, str(ROOT / "src" / "run.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cfg_hydra_shows_the_interpolations_and_all_devices_is_one_line(tmp_path):
    proc = run_cli([*STUDY, "--cfg", "hydra"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tasks_per_node: ${prefopt.tasks_per_node:${trainer.devices}}" in proc.stdout
    assert "nodes: ${oc.select:trainer.num_nodes,1}" in proc.stdout
    assert "validated against ConfigStore" not in proc.stderr
    proc = run_cli(["-m", "hydra/launcher=submitit_slurm", "trainer=fsdp", "loss=dpo,simpo"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: trainer.devices=-1 (every visible device) cannot tell SLURM how many tasks to start per node; "
        "with hydra/launcher=submitit_slurm set it to the GPUs per node, e.g. trainer.devices=8"]
