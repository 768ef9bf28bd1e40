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
