"""Before training: estimate what the run will write and stop, in one line, where a folder lacks the room.

The output folder receives the checkpoints (`prefopt.train.checkpointing.checkpoints_at_once` files of
weights + AdamW state; a LoRA checkpoint holds only the adapters) and `model/` (the whole policy, LoRA
merged); the cache folder receives the log-prob tables (a few numbers per pair). Sizes come from the
loaded policy's own parameters and dtypes. Only what is new counts: a resumed run overwrites or rotates
out the checkpoints already in its `checkpoints/` folder, so their bytes (already taken from the free
space) are subtracted from the checkpoints it writes. An existing `model/` is not: the new one is written
beside it and renamed into place (prefopt.store.atomic), so both exist for a moment. Checkpoints are
written in their own folder (prefopt.train.ckpt_io), never staged in `$TMPDIR`, so `$TMPDIR` is not
checked. `prefopt.run.steps.fit` calls `check_disk_space` just before fit.
Exercised by `pytest tests/test_disk.py` (shutil.disk_usage mocked).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prefopt.train.checkpointing import checkpoints_at_once
from prefopt.errors import ConfigError
from prefopt.log import PLAIN, get_logger
from prefopt.contracts.predicates import is_lora, is_sharded

log = get_logger()
CACHE_BYTES_PER_PAIR = 96  # reference + marginal tables: float32 log-prob and int64 count per response
CACHE_SLACK = 16 * 2**20   # manifests, the start policy's evaluation cache


class DiskSpaceError(ConfigError):
    """A folder cannot hold what the run will write; the message says how much and what to change."""


@dataclass
class DiskEstimate:
    checkpoint_bytes: int   # one checkpoint file (or sharded folder)
    checkpoints: int        # files that can exist at once
    model_bytes: int        # model/ (the whole policy, adapters merged)
    cache_bytes: int
    existing_checkpoint_bytes: int = 0  # a resume's checkpoints already on disk, overwritten or rotated out

    @property
    def new_checkpoint_bytes(self) -> int:
        return max(0, self.checkpoints * self.checkpoint_bytes - self.existing_checkpoint_bytes)

    @property
    def output_bytes(self) -> int:
        return self.new_checkpoint_bytes + self.model_bytes


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def checkpoint_bytes(policy: torch.nn.Module, zero3: bool = False) -> int:
    """Weights saved + AdamW's two moments per trainable weight (same dtype as the weight); DeepSpeed also
    saves fp32 master weights and fp32 moments (12 bytes per trainable weight)."""
    trainable = [p for p in policy.parameters() if p.requires_grad]
    saved = trainable if is_lora(policy) else list(policy.parameters())
    optimizer = 12 * sum(p.numel() for p in trainable) if zero3 else 2 * _bytes(trainable)
    return _bytes(saved) + optimizer


def model_bytes(policy: torch.nn.Module) -> int:
    """model/: every weight except LoRA's adapters, which are merged into them."""
    return _bytes(p for name, p in policy.named_parameters() if "lora_" not in name)


def total_steps(trainer: Any, train_pairs: int, batch_size: int) -> int:
    """Optimizer steps of the fit: max_steps, or epochs × batches per epoch / accumulation."""
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    batches = math.ceil(train_pairs / max(1, trainer.world_size * batch_size))
    return max(1, int(trainer.max_epochs or 1)) * math.ceil(batches / max(1, trainer.accumulate_grad_batches))


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (a sharded checkpoint)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def existing_checkpoint_bytes(checkpoints: Path) -> int:
    """Bytes of the checkpoints (`*.ckpt` files or sharded folders) already in a run's checkpoint folder."""
    return sum(_size(p) for p in Path(checkpoints).glob("*.ckpt")) if Path(checkpoints).is_dir() else 0


def estimate(cfg: Any, policy: torch.nn.Module, steps: int, pairs: int, zero3: bool = False,
             existing: int = 0) -> DiskEstimate:
    """What the run writes; `existing`: bytes of the checkpoints a resume finds (and overwrites) in its folder."""
    return DiskEstimate(
        checkpoint_bytes=checkpoint_bytes(policy, zero3),
        checkpoints=checkpoints_at_once(cfg, steps),
        model_bytes=model_bytes(policy),
        cache_bytes=CACHE_BYTES_PER_PAIR * pairs + CACHE_SLACK if cfg.get("logp_cache", True) else 0,
        existing_checkpoint_bytes=existing if checkpoints_at_once(cfg, steps) else 0,
    )


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _existing(path: Path) -> Path:
    """The folder itself or its nearest existing parent (the run folder may not exist yet)."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def describe(est: DiskEstimate) -> str:
    if not est.checkpoints:
        return f"model/ {gb(est.model_bytes)}, no checkpoints"
    there = f" - {gb(est.existing_checkpoint_bytes)} already there" if est.existing_checkpoint_bytes else ""
    return f"{est.checkpoints} checkpoint(s) × {gb(est.checkpoint_bytes)}{there} + model/ {gb(est.model_bytes)}"


def check(est: DiskEstimate, output_dir: Path, cache_dir: Path) -> str:
    """Raise DiskSpaceError when a folder's filesystem has less free space than the run needs there;
    returns the one-line summary `check_disk_space` prints. Two folders on one filesystem add up."""
    out, cache = _existing(output_dir), _existing(cache_dir)
    same = same_filesystem(out, cache)
    needs = [(output_dir, out, est.output_bytes + (est.cache_bytes if same else 0), describe(est))]
    if not same:
        needs.append((cache_dir, cache, est.cache_bytes, "log-prob caches"))
    for folder, existing, need, what in needs:
        free = shutil.disk_usage(existing).free
        if need > free:
            fix = ("set checkpoint.keep=1 or checkpoint.enabled=false, free space, or write elsewhere "
                   "(hydra.run.dir=...)") if folder == output_dir else "free space or set paths.cache_dir=..."
            raise DiskSpaceError(f"not enough disk space for {folder}: the run writes about {gb(need)} there "
                                 f"({what}) but {gb(free)} is free; {fix}")
    free = shutil.disk_usage(out).free
    return f"[prefopt] disk: about {gb(est.output_bytes)} to write ({describe(est)}), {gb(free)} free"


def check_disk_space(cfg: Any, trainer: Any, policy: torch.nn.Module, output_dir: Path, cache_dir: Path,
                     train_pairs: int, eval_pairs: int = 0, resuming: bool = False) -> None:
    """`prefopt.run.steps.fit`'s call, just before fit: estimate from the trainer and policy, check, print the summary on rank 0. A
    resume (`resuming`) subtracts the checkpoints already in `output_dir/checkpoints`; a fresh start does
    not (it neither restores their rotation nor removes them)."""

    zero3 = is_sharded(trainer.strategy) and "DeepSpeed" in type(trainer.strategy).__name__
    steps = total_steps(trainer, train_pairs, int(cfg.data.batch_size))
    existing = existing_checkpoint_bytes(Path(output_dir) / "checkpoints") if resuming else 0
    line = check(estimate(cfg, policy, steps, train_pairs + eval_pairs, zero3, existing), output_dir, cache_dir)
    if trainer.is_global_zero:
        log.info(line, extra=PLAIN)  # `check` returns the line whole, "[prefopt] disk: ...", for its tests
