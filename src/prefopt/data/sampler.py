"""Seeded, resumable, shardable training order: epoch e's pair order is a permutation fixed by (seed, e).

- Resume: the order is a pure function of the seed and the epoch, so a run restarted from a mid-epoch
  checkpoint skips exactly the batches it already trained on and sees the same data in the same order
  as an uninterrupted run (Lightning saves no sampler state of its own). `ResumableLoader` tells
  Lightning it is resumable, so Lightning expects the restarted epoch to yield only what remains.
- Data parallel: with `world` processes each global batch (per-device batch × world pairs, taken in
  permutation order) is split into `world` equal slices, one per rank; every rank sees the same number
  of batches (an incomplete last global batch is dropped), and the union of the ranks' batches is
  exactly the batch a single process would train on with the global batch size.
Exercised by `pytest tests/data/test_sampler.py`, the kill-and-resume test and the DDP test.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class EpochSampler(Sampler[int]):
    """This rank's indices for one epoch; `skip` drops the first global batches once (resume)."""

    def __init__(self, n: int, seed: int, batch_size: int = 1, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.batch_size, self.rank, self.world = n, seed, batch_size, rank, world
        self.epoch = 0
        self.skip = 0  # global batches

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at each epoch start
        self.epoch = epoch

    def permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def batches_per_epoch(self) -> int:
        if self.world == 1:
            return -(-self.n // self.batch_size)
        return self.n // (self.batch_size * self.world)

    def __iter__(self) -> Iterator[int]:
        order = self.permutation(self.epoch)
        start, self.skip = self.skip, 0
        if self.world == 1:
            return iter(order[start * self.batch_size :])
        size = self.batch_size * self.world
        mine: list[int] = []
        for g in range(start, self.batches_per_epoch()):
            block = order[g * size : (g + 1) * size]
            mine.extend(block[self.rank * self.batch_size : (self.rank + 1) * self.batch_size])
        return iter(mine)

    def __len__(self) -> int:
        if self.world == 1:
            return self.n
        return self.batches_per_epoch() * self.batch_size


class ResumableLoader(DataLoader):
    """A DataLoader over an EpochSampler that resumes mid-epoch from the number of batches consumed.

    `resume_from(batches_consumed)` positions the sampler: the epoch is batches // batches-per-epoch, and
    the batches already trained on in that epoch are skipped. state_dict / load_state_dict make
    Lightning treat the loader as resumable; the position itself is derived from the restored global step.
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int, rank: int = 0, world: int = 1, **kwargs: Any) -> None:
        self.epoch_sampler = EpochSampler(len(dataset), seed, batch_size, rank, world)
        super().__init__(dataset, batch_size=batch_size, sampler=self.epoch_sampler, **kwargs)

    def resume_from(self, batches_consumed: int) -> None:
        epoch, done = divmod(batches_consumed, self.epoch_sampler.batches_per_epoch())
        self.epoch_sampler.epoch = epoch
        self.epoch_sampler.skip = done

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch_sampler.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass  # the position comes from the trainer's restored global step (see PreferenceDataModule)
