"""Several small sweep jobs on one GPU at once (conf/hydra/launcher/gpu_jobs.yaml).

A tiny model leaves a GPU mostly idle; the joblib launcher can run `gpu_jobs.jobs_per_gpu` jobs per GPU
side by side (`hydra.launcher.n_jobs` = jobs_per_gpu × gpus, the resolver `${prefopt.gpu_n_jobs:...}`),
and each job pins itself to one device: job number mod gpus (`job_device`), written into
`trainer.devices=[i]` (`pin_job_device`, called by prefopt.run.runner before anything is built).
Lightning's device list, not CUDA_VISIBLE_DEVICES, because joblib reuses a worker process for several
jobs and CUDA reads that variable once per process. Jobs of equal length are dealt round-robin, so every
GPU gets jobs_per_gpu of them at a time.

    python src/run.py -m hydra/launcher=gpu_jobs gpu_jobs.jobs_per_gpu=8 trainer=gpu model=tiny seed='range(16)'

`gpu_jobs.gpus`: "auto" (every visible GPU: CUDA_VISIBLE_DEVICES, else torch's count) or a number; 0 (or a
CPU trainer) pins nothing and runs jobs_per_gpu jobs at once. Exercised by `pytest tests/test_gpu_jobs.py`.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from prefopt.errors import ConfigError


def visible_gpus() -> int:
    """GPUs this process may use: the entries of CUDA_VISIBLE_DEVICES when set, else torch's count."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        entries = [e.strip() for e in listed.split(",") if e.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way to hide every GPU
        return len(entries[: next((i for i, e in enumerate(entries) if e.startswith("-")), len(entries))])
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_count(gpus: Any) -> int:
    """`gpu_jobs.gpus` as a number: "auto" is every visible GPU."""
    if gpus == "auto":
        return visible_gpus()
    try:
        count = int(gpus)
    except (TypeError, ValueError):
        count = -1
    if count < 0 or isinstance(gpus, bool):
        raise ConfigError(f"gpu_jobs.gpus={gpus!r}: a number of GPUs >= 0, or auto (every visible GPU)")
    return count


def n_jobs(jobs_per_gpu: Any, gpus: Any) -> int:
    """Jobs the launcher runs at once: jobs_per_gpu on each GPU (jobs_per_gpu in all without a GPU)."""
    per_gpu = int(jobs_per_gpu)
    if per_gpu < 1:
        raise ConfigError(f"gpu_jobs.jobs_per_gpu={jobs_per_gpu!r}: jobs run at once on each GPU, at least 1")
    return per_gpu * max(gpu_count(gpus), 1)


def job_device(job_num: int, gpus: int) -> int:
    """The GPU (index among the visible ones) of multirun job `job_num`: round-robin over `gpus`."""
    if gpus < 1:
        raise ConfigError("gpu_jobs.gpus=0: there is no GPU to pin a job to")
    return int(job_num) % gpus


def _one_device(devices: Any) -> bool:
    """Whether `trainer.devices` asks for one device (or leaves it to the launcher: "auto")."""
    listed = OmegaConf.is_list(devices) or isinstance(devices, list)
    return devices in (1, "1", "auto") or (listed and len(devices) == 1)


def pin_job_device(cfg: DictConfig, job_num: int) -> int | None:
    """Under hydra/launcher=gpu_jobs, set `trainer.devices=[job_num mod gpus]` and return that index;
    None (nothing changed) without gpu_jobs, with gpus=0 or on a CPU trainer."""
    settings = cfg.get("gpu_jobs")
    trainer = cfg.get("trainer")
    if settings is None or trainer is None or str(trainer.get("accelerator", "auto")).lower() == "cpu":
        return None
    gpus = gpu_count(settings.get("gpus", "auto"))
    if gpus == 0:
        return None
    devices = trainer.get("devices", "auto")
    if not _one_device(devices):
        shown = OmegaConf.to_container(devices) if OmegaConf.is_list(devices) else devices
        raise ConfigError(f"trainer.devices={shown!r}: hydra/launcher=gpu_jobs runs each job on one GPU; "
                          "set trainer.devices=1")
    index = job_device(job_num, gpus)
    with open_dict(trainer):
        trainer.devices = [index]
    return index


def register() -> None:
    """The launcher preset's resolver `${prefopt.gpu_n_jobs:jobs_per_gpu,gpus}` (idempotent)."""
    if not OmegaConf.has_resolver("prefopt.gpu_n_jobs"):
        OmegaConf.register_new_resolver("prefopt.gpu_n_jobs", n_jobs)
