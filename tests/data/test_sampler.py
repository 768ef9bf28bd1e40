"""The resumable training order: per-epoch seeded permutations, and resuming mid-epoch skips exactly
the batches already consumed."""

from prefopt.data.sampler import EpochSampler, ResumableLoader


def test_epoch_permutations_are_seeded():
    s = EpochSampler(10, seed=3)
    e0 = list(s)
    assert sorted(e0) == list(range(10)) and list(s) == e0  # same epoch, same order
    s.set_epoch(1)
    assert list(s) != e0 and list(EpochSampler(10, seed=3)) == e0
    assert list(EpochSampler(10, seed=4)) != e0


def test_resume_skips_consumed_batches_then_continues_normally():
    data = list(range(10))
    full = ResumableLoader(data, batch_size=3, seed=0)  # 4 batches per epoch: 3, 3, 3, 1
    epoch0 = [b.tolist() for b in full]
    full.epoch_sampler.set_epoch(1)
    epoch1 = [b.tolist() for b in full]

    resumed = ResumableLoader(data, batch_size=3, seed=0)
    resumed.resume_from(6)  # 6 batches consumed: all of epoch 0 and 2 of epoch 1
    assert resumed.epoch_sampler.epoch == 1
    assert [b.tolist() for b in resumed] == epoch1[2:]
    assert [b.tolist() for b in resumed] == epoch1  # the skip applies once
    assert epoch0 != epoch1


def test_ranks_split_each_global_batch():
    """Two ranks with batch 2 see, step by step, exactly the pairs one process sees with batch 4."""
    data = list(range(11))
    single = [sorted(b.tolist()) for b in ResumableLoader(data, batch_size=4, seed=5)]
    ranks = [list(ResumableLoader(data, batch_size=2, seed=5, rank=r, world=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # 11 // 4 full global batches; the partial one is dropped
    merged = [sorted(a.tolist() + b.tolist()) for a, b in zip(*ranks)]
    assert merged == single[:2]
    resumed = ResumableLoader(data, batch_size=2, seed=5, rank=1, world=2)
    resumed.resume_from(1)
    assert [b.tolist() for b in resumed] == [ranks[1][1].tolist()]
