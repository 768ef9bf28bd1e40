"""Seeded, resumable training order: the pair order of epoch e is a permutation fixed by (seed, e).

Because the order is a pure function of the seed and the epoch, a run restarted from a mid-epoch
checkpoint can skip exactly the batches it already trained on and see the same data in the same order
as an uninterrupted run (Lightning saves no sampler state of its own). `ResumableLoader` tells
Lightning it is resumable, so Lightning expects the restarted epoch to yield only its remaining batches.
Exercised by `pytest tests/data/test_sampler.py` and the kill-and-resume test.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class EpochSampler(Sampler[int]):
    """Indices 0..n-1 in a fresh seeded permutation per epoch; `skip` drops the first items once."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at each epoch start
        self.epoch = epoch

    def permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        start, self.skip = self.skip, 0
        return iter(self.permutation(self.epoch)[start:])

    def __len__(self) -> int:
        return self.n


class ResumableLoader(DataLoader):
    """A DataLoader over an EpochSampler that resumes mid-epoch from the number of batches consumed.

    `resume_from(batches_consumed)` positions the sampler: the epoch is batches // batches-per-epoch, and
    the batches already trained on in that epoch are skipped. state_dict / load_state_dict make
    Lightning treat the loader as resumable; the position itself is derived from the restored global step.
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int, **kwargs: Any) -> None:
        self.epoch_sampler = EpochSampler(len(dataset), seed)
        super().__init__(dataset, batch_size=batch_size, sampler=self.epoch_sampler, **kwargs)

    def resume_from(self, batches_consumed: int) -> None:
        per_epoch = len(self)
        epoch, done = divmod(batches_consumed, per_epoch)
        self.epoch_sampler.epoch = epoch
        self.epoch_sampler.skip = done * self.batch_size

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch_sampler.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass  # the position comes from the trainer's restored global step (see PreferenceDataModule)
