"""Several sweep jobs per GPU (conf/hydra/launcher/gpu_jobs.yaml, prefopt/config/gpu_jobs.py): the preset
composes into the joblib launcher with n_jobs = jobs_per_gpu × gpus, jobs are dealt round-robin over the
GPUs and each pins itself through trainer.devices=[i]; a CPU trainer and gpus=0 pin nothing."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from prefopt.config.gpu_jobs import gpu_count, job_device, n_jobs, pin_job_device, visible_gpus
from prefopt.config.launcher import register
from prefopt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def composed(overrides):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_preset_is_the_joblib_launcher_with_jobs_per_gpu_times_gpus():
    cfg = composed(["hydra/launcher=gpu_jobs", "gpu_jobs.jobs_per_gpu=8", "gpu_jobs.gpus=2", "trainer=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher.n_jobs == 16 and launcher.prefer == "processes"
    assert cfg.trainer.devices == 1  # the job pins itself, not the composition


def test_gpus_auto_counts_the_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7")
    assert visible_gpus() == 3 and gpu_count("auto") == 3
    assert composed(["hydra/launcher=gpu_jobs", "gpu_jobs.jobs_per_gpu=4"]).hydra.launcher.n_jobs == 12
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == 0 and n_jobs(4, "auto") == 4  # no GPU: jobs_per_gpu jobs at once
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,-1,1")  # CUDA stops at the first invalid entry
    assert visible_gpus() == 1


def test_jobs_are_dealt_round_robin_so_each_gpu_runs_jobs_per_gpu():
    # 16 jobs on 2 GPUs with 4 per GPU: any 8 consecutive jobs (what runs at once) hold 4 on each GPU
    devices = [job_device(num, 2) for num in range(16)]
    for start in range(0, 16, 8):
        assert Counter(devices[start:start + 8]) == {0: 4, 1: 4}
    assert [job_device(num, 1) for num in range(5)] == [0] * 5


def job_cfg(trainer, gpus=2):
    return OmegaConf.create({"gpu_jobs": {"jobs_per_gpu": 4, "gpus": gpus}, "trainer": trainer})


def test_a_job_pins_itself_to_its_gpu():
    cfg = job_cfg({"accelerator": "gpu", "devices": 1})
    assert pin_job_device(cfg, 5) == 1 and list(cfg.trainer.devices) == [1]
    cfg = job_cfg({"accelerator": "gpu", "devices": "auto"}, gpus=4)
    assert pin_job_device(cfg, 6) == 2 and list(cfg.trainer.devices) == [2]


def test_nothing_is_pinned_on_a_cpu_without_the_preset_or_with_no_gpu():
    cpu = job_cfg({"accelerator": "cpu", "devices": 1})
    assert pin_job_device(cpu, 3) is None and cpu.trainer.devices == 1
    plain = OmegaConf.create({"trainer": {"accelerator": "gpu", "devices": 1}})
    assert pin_job_device(plain, 3) is None and plain.trainer.devices == 1
    none = job_cfg({"accelerator": "gpu", "devices": 1}, gpus=0)
    assert pin_job_device(none, 3) is None and none.trainer.devices == 1


def test_a_multi_gpu_job_or_a_bad_setting_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"^trainer.devices=8: hydra/launcher=gpu_jobs runs each job on one GPU"):
        pin_job_device(job_cfg({"accelerator": "gpu", "devices": 8}), 0)
    with pytest.raises(ConfigError, match=r"^gpu_jobs.jobs_per_gpu=0"):
        n_jobs(0, 1)
    with pytest.raises(ConfigError, match=r"^gpu_jobs.gpus='two'"):
        gpu_count("two")


def test_the_command_line_composes_the_preset_and_refuses_a_bad_value():
    run = [sys.executable, str(ROOT / "src" / "run.py"), "hydra/launcher=gpu_jobs", "gpu_jobs.jobs_per_gpu=3",
           "gpu_jobs.gpus=2", "--cfg", "all", "--resolve"]
    proc = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "n_jobs: 6\n" in proc.stdout and "JoblibLauncher" in proc.stdout
    proc = subprocess.run([*run[:3], "gpu_jobs.jobs_per_gpu=0", "--cfg", "hydra"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "gpu_jobs.jobs_per_gpu" in proc.stderr + proc.stdout
