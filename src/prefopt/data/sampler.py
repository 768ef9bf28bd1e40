"""Seeded, resumable, shardable training batches: epoch e's batches are a pure function of (seed, e).

- Order: a permutation fixed by (seed, epoch), cut into batches of `batch_size` pairs. With
  `group_by_length` the permutation is cut into windows of GROUP_WINDOW batches; each window is sorted
  by its pairs' longer response, cut into runs of SUB_GROUP batches that are sorted by prompt length,
  and cut into batches; the batches (global batches under data parallelism) are then shuffled, seeded.
  Pairs of like lengths share a batch, so little of each padded batch is padding; which pairs train
  together still changes every epoch. With `max_tokens` a batch also stops growing before its padded
  full-row size, 2 x pairs x longest (prompt + response), would exceed the budget (a single pair over
  the budget is a batch of its own); `batch_size` stays the most pairs a batch holds.
- Resume: the batches are a pure function of the seed and the epoch, so a run restarted from a
  mid-epoch checkpoint skips exactly the batches it already trained on and sees the same data in the
  same order as an uninterrupted run (Lightning saves no sampler state of its own). `ResumableLoader`
  tells Lightning it is resumable, so Lightning expects the restarted epoch to yield only what remains.
  Epochs may differ in batch count under a token budget; `resume_from` walks them.
- Data parallel: with `world` processes each global batch is `world` consecutive batches of the
  epoch, one per rank (rank r takes the r-th), so every rank sees the same number of batches (an
  incomplete last global batch is dropped), and the union of the ranks' batches is exactly the batch a
  single process would train on with the global batch size (without grouping or budget).
Exercised by `pytest tests/data/test_sampler.py`, the kill-and-resume test and the DDP test.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

GROUP_WINDOW = 64  # batches per length-sorted window: wider packs tighter, but mixes less across the epoch
SUB_GROUP = 4  # batches per run re-sorted by prompt length inside a window sorted by response length

Lengths = Sequence[tuple[int, int, int]]  # per pair: prompt, chosen, rejected tokens


def padded_row_tokens(lengths: Lengths, batch: Sequence[int]) -> int:
    """Tokens of `batch` as full rows padded to its longest: 2 x pairs x max(prompt + longer response)."""
    return 2 * len(batch) * max((lengths[i][0] + max(lengths[i][1], lengths[i][2]) for i in batch), default=0)


class EpochSampler(Sampler[int]):
    """This rank's batches for one epoch (iterated as indices); `skip` drops the first global batches
    once (resume). `lengths` is needed for `group_by_length` and `max_tokens`."""

    def __init__(self, n: int, seed: int, batch_size: int = 1, rank: int = 0, world: int = 1,
                 lengths: Optional[Lengths] = None, group_by_length: bool = False,
                 max_tokens: Optional[int] = None) -> None:
        if (group_by_length or max_tokens) and (lengths is None or len(lengths) != n):
            raise ValueError("group_by_length and max_tokens need one (prompt, chosen, rejected) length per pair")
        self.n, self.seed, self.batch_size, self.rank, self.world = n, seed, batch_size, rank, world
        self.lengths, self.group_by_length, self.max_tokens = lengths, group_by_length, max_tokens
        self.epoch = 0
        self.skip = 0  # global batches
        self._memo: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at each epoch start
        self.epoch = epoch

    def permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def _cut(self, order: list[int]) -> list[list[int]]:
        """Consecutive batches of at most batch_size pairs (and max_tokens padded tokens)."""
        if not self.max_tokens:
            return [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            if current and (len(current) == self.batch_size
                            or padded_row_tokens(self.lengths, current + [i]) > self.max_tokens):
                batches.append(current)
                current = []
            current.append(i)
        return batches + ([current] if current else [])

    def _grouped(self, order: list[int]) -> list[int]:
        """`order` re-sorted window by window: longer response, then prompt length in runs."""
        lengths = self.lengths
        window = GROUP_WINDOW * self.batch_size * self.world
        run = SUB_GROUP * self.batch_size
        out: list[int] = []
        for w in range(0, len(order), window):
            block = sorted(order[w: w + window], key=lambda i: max(lengths[i][1], lengths[i][2]))
            for r in range(0, len(block), run):
                out.extend(sorted(block[r: r + run], key=lambda i: lengths[i][0]))
        return out

    def global_batches(self, epoch: int) -> list[list[list[int]]]:
        """Epoch `epoch`'s global batches, each a list of `world` per-rank batches."""
        order = self.permutation(epoch)
        batches = self._cut(self._grouped(order) if self.group_by_length else order)
        if self.world > 1 and not self.max_tokens and batches and len(batches[-1]) < self.batch_size:
            batches.pop()  # equal per-rank batch sizes: a partial last batch would be one rank's alone
        groups = [batches[g: g + self.world] for g in range(0, len(batches) - self.world + 1, self.world)]
        if self.group_by_length:  # sorted windows would otherwise run short-to-long
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 7_919)
            groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
        return groups

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of epoch `epoch` (all of them; `skip` is applied by iteration)."""
        if self._memo is None or self._memo[0] != epoch:
            self._memo = (epoch, [group[self.rank] for group in self.global_batches(epoch)])
        return self._memo[1]

    def batches_per_epoch(self, epoch: Optional[int] = None) -> int:
        return len(self.batches(self.epoch if epoch is None else epoch))

    def epoch_batches(self) -> list[list[int]]:
        """The batches this epoch still yields (the skip applies once)."""
        start, self.skip = self.skip, 0
        return self.batches(self.epoch)[start:]

    def __iter__(self) -> Iterator[int]:
        return iter([i for batch in self.epoch_batches() for i in batch])

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches(self.epoch))


class EpochBatchSampler(Sampler[list[int]]):
    """The batches of an EpochSampler, for a DataLoader's `batch_sampler`. Its `sampler` attribute is
    the EpochSampler, where Lightning calls `set_epoch` at each epoch start."""

    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.sampler.epoch_batches())

    def __len__(self) -> int:
        return self.sampler.batches_per_epoch()


class ResumableLoader(DataLoader):
    """A DataLoader over an EpochSampler's batches that resumes mid-epoch from the batches consumed.

    `resume_from(batches_consumed)` positions the sampler: whole epochs are counted off, and the
    batches already trained on in the current one are skipped. state_dict / load_state_dict make
    Lightning treat the loader as resumable; the position itself is derived from the restored global step.
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 lengths: Optional[Lengths] = None, group_by_length: bool = False,
                 max_tokens: Optional[int] = None, **kwargs: Any) -> None:
        self.epoch_sampler = EpochSampler(len(dataset), seed, batch_size, rank, world, lengths,
                                          group_by_length, max_tokens)
        super().__init__(dataset, batch_sampler=EpochBatchSampler(self.epoch_sampler), **kwargs)

    def resume_from(self, batches_consumed: int) -> None:
        if not self.epoch_sampler.max_tokens:  # every epoch has the same number of batches
            epoch, left = divmod(batches_consumed, max(1, self.epoch_sampler.batches_per_epoch(0)))
        else:
            epoch, left = 0, batches_consumed
        while left >= (count := self.epoch_sampler.batches_per_epoch(epoch)) and count > 0:
            left -= count
            epoch += 1
        self.epoch_sampler.epoch = epoch
        self.epoch_sampler.skip = left

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch_sampler.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass  # the position comes from the trainer's restored global step (see PreferenceDataModule)
