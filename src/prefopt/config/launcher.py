"""What a cluster launcher asks for, derived from the trainer config (conf/hydra/launcher/submitit_slurm.yaml).

Lightning runs one process per device and, under SLURM, checks that `--ntasks-per-node` equals
`trainer.devices` and `--nodes` equals `trainer.num_nodes`. The launcher config reads both from the
trainer through the resolvers registered here (`${prefopt.tasks_per_node:...}`,
`${prefopt.gpus_per_node:...}`), so `-m hydra/launcher=submitit_slurm trainer=fsdp trainer.devices=8` asks
SLURM for 8 tasks and 8 GPUs per node. `src/run.py` calls `register()` before Hydra composes.
Exercised by `pytest tests/test_launcher.py`.
"""

from __future__ import annotations

import warnings
from typing import Any

from omegaconf import ListConfig, OmegaConf

from prefopt.errors import ConfigError


def devices_per_node(devices: Any) -> int:
    """The number of processes (= devices) Lightning starts per node for `trainer.devices`."""
    if isinstance(devices, (list, tuple, ListConfig)):
        count = len(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    else:
        try:
            count = int(devices)
        except (TypeError, ValueError):
            count = -1
    if count <= 0:
        raise ConfigError(
            f"trainer.devices={devices!r} (every visible device) cannot tell SLURM how many tasks to start per "
            "node; with hydra/launcher=submitit_slurm set it to the GPUs per node, e.g. trainer.devices=8"
        )
    return count


def gpus_per_node(devices: Any, accelerator: Any = "gpu") -> int | None:
    """GPUs to reserve per node: one per device, none when the trainer runs on CPUs."""
    count = devices_per_node(devices)
    return None if str(accelerator).lower() == "cpu" else count


NAME_LIMIT = 200  # bytes of a job folder's name before it is cut and hashed (filesystems allow 255)


def job_dirname(overrides: str, limit: int = NAME_LIMIT) -> str:
    """A multirun job's folder name from its overrides (Hydra's override_dirname): one folder (a `/` in a
    value becomes `_`), at most `limit` characters; a longer one is cut and ends in a hash of the whole,
    so two long override lists never share a folder."""
    import hashlib

    name = str(overrides).replace("/", "_")
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    head = name.encode()[: limit - len(digest) - 1].decode(errors="ignore")
    return f"{head}-{digest}"


def register() -> None:
    """Register the resolvers (idempotent) and silence Hydra's note that our submitit_slurm.yaml is
    checked against the plugin's schema of the same name (which is what we want: it extends it)."""
    if not OmegaConf.has_resolver("prefopt.tasks_per_node"):
        OmegaConf.register_new_resolver("prefopt.tasks_per_node", devices_per_node)
    if not OmegaConf.has_resolver("prefopt.job_dirname"):
        OmegaConf.register_new_resolver("prefopt.job_dirname", job_dirname)
    if not OmegaConf.has_resolver("prefopt.gpus_per_node"):
        OmegaConf.register_new_resolver("prefopt.gpus_per_node", gpus_per_node)
    from prefopt.config import gpu_jobs  # conf/hydra/launcher/gpu_jobs.yaml's n_jobs

    gpu_jobs.register()
    warnings.filterwarnings("ignore", message=r"(?s).*hydra/launcher/submitit_slurm' is validated against ConfigStore")


def precheck_slurm(argv: list[str], conf_dir: str) -> None:
    """With `hydra/launcher=submitit_slurm`, fail in one line before Hydra does (with a traceback) when
    `trainer.devices` cannot be turned into tasks per node. Composes only the trainer-related overrides."""
    if "hydra/launcher=submitit_slurm" not in argv:
        return
    from hydra import compose, initialize_config_dir

    keep = [a for a in argv if a.lstrip("+~").startswith(("trainer", "experiment")) and "," not in a]
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        trainer = compose(config_name="train", overrides=keep).trainer
    devices_per_node(trainer.get("devices", 1))
