"""Which checkpoints a run writes, how many it keeps, and what a LoRA checkpoint holds.

- `checkpoint_callback(cfg, folder)`: `last.ckpt` at the end (and when validating), plus one every
  `checkpoint.every_n_train_steps` steps of which only the newest `checkpoint.keep` stay (-1: all);
  `checkpoint.enabled=false` writes none (the runner then builds no callback).
- `checkpoints_at_once(cfg, total_steps)`: how many checkpoint files can exist together (for prefopt.train.disk).
- LoRA: `trainable_only` drops the frozen base weights from a checkpoint's state_dict (adapters and
  their optimizer state remain, a few MB instead of the whole model); `fill_frozen` puts them back from
  the model being resumed, whose base weights are the same starting policy. Called by PreferenceModule's
  checkpoint hooks.
Exercised by `pytest tests/test_disk.py` and `tests/test_lora.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prefopt.contracts.predicates import is_lora

TRIMMED = "prefopt_trainable_only"  # marks a checkpoint whose state_dict holds the trainable weights only


def checkpoint_callback(cfg: Any, folder: Path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    every = int(cfg.checkpoint.get("every_n_train_steps") or 0)
    keep = int(cfg.checkpoint.get("keep", -1))
    return ModelCheckpoint(
        dirpath=str(folder),
        save_last=True,
        # without a monitored value Lightning keeps all or none; the step picks the newest `keep`
        monitor="step" if every and keep > 0 else None,
        mode="max",
        save_top_k=(keep if keep > 0 else -1) if every else 0,
        every_n_train_steps=every or None,
        # a resumed run writes its own names again (last.ckpt), not last-v1.ckpt beside a stale last.ckpt
        # (a SLURM requeue restores a checkpoint saved before the interrupt's last.ckpt existed)
        enable_version_counter=False,
    )


def checkpoints_at_once(cfg: Any, total_steps: int) -> int:
    """Checkpoint files on disk at the worst moment: last.ckpt plus the kept periodic ones, one more while
    a new periodic checkpoint is written before the oldest is removed, and one more for the temporary
    file a checkpoint is written to before it replaces the old one (prefopt.train.ckpt_io)."""
    if not cfg.checkpoint.get("enabled", True):
        return 0
    every = int(cfg.checkpoint.get("every_n_train_steps") or 0)
    keep = int(cfg.checkpoint.get("keep", -1))
    periodic = total_steps // every if every else 0
    return 2 + (periodic if keep <= 0 else min(periodic, keep + 1))


def _trainable_keys(policy: torch.nn.Module, prefix: str) -> set[str]:
    return {f"{prefix}{name}" for name, p in policy.named_parameters() if p.requires_grad}


def trainable_only(policy: torch.nn.Module, checkpoint: dict[str, Any], prefix: str = "policy.") -> None:
    """A LoRA policy's checkpoint keeps its adapters only (the optimizer state is already adapters-only)."""
    if not is_lora(policy):
        return
    state = checkpoint.get("state_dict", {})
    keep = _trainable_keys(policy, prefix)
    for key in [k for k in state if k.startswith(prefix) and k not in keep]:
        del state[key]
    checkpoint[TRIMMED] = True


def fill_frozen(policy: torch.nn.Module, checkpoint: dict[str, Any], prefix: str = "policy.") -> None:
    """Complete a trimmed checkpoint with the frozen weights of the policy it is loaded into."""
    if not checkpoint.get(TRIMMED):
        return
    state = checkpoint.setdefault("state_dict", {})
    for key, value in policy.state_dict(prefix=prefix).items():
        state.setdefault(key, value)
