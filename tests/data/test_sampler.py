"""The resumable training order (prefopt.data.sampler): per-epoch seeded permutations, resuming
mid-epoch skips exactly the batches already consumed, data-parallel ranks split each global batch, and
length grouping and the token budget keep all of that while cutting padding."""

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


# ---------------------------------------------------------------- length grouping and token budget

import random  # noqa: E402

import pytest  # noqa: E402

from prefopt.data.sampler import EpochBatchSampler, padded_row_tokens  # noqa: E402


def lognormal_lengths(n, seed=0):
    rng = random.Random(seed)
    return [(min(128, int(rng.lognormvariate(3.9, 0.8)) + 2), int(rng.lognormvariate(4.2, 0.7)) + 1,
             int(rng.lognormvariate(4.2, 0.7)) + 1) for _ in range(n)]


def padded_share(lengths, batches):
    real = sum(2 * lengths[i][0] + lengths[i][1] + lengths[i][2] for b in batches for i in b)
    return 1 - real / sum(padded_row_tokens(lengths, b) for b in batches)


def test_token_budget_cuts_batches_by_padded_rows():
    """Hand-worked: a batch grows while 2 x pairs x longest (prompt + longer response) <= 20."""
    lengths = [(2, 3, 1), (2, 1, 1), (10, 5, 5), (1, 1, 1)]  # rows of 5, 3, 15, 2 tokens
    s = EpochSampler(4, seed=0, batch_size=4, lengths=lengths, max_tokens=20)
    # [0] 10, [0, 1] 2*2*5 = 20 ok, + 2 -> 2*3*15 = 90: cut; [2] alone is 30 (over, but one pair);
    # [2, 3] 2*2*15 = 60: cut; then [3]
    assert s._cut([0, 1, 2, 3]) == [[0, 1], [2], [3]]
    assert padded_row_tokens(lengths, [0, 1]) == 20
    s = EpochSampler(4, seed=0, batch_size=1, lengths=lengths, max_tokens=1000)
    assert s._cut([3, 2, 1, 0]) == [[3], [2], [1], [0]]  # batch_size stays the most pairs a batch holds


def test_grouping_is_seeded_covers_every_pair_and_cuts_padding():
    lengths = lognormal_lengths(2000)
    a = EpochSampler(2000, seed=3, batch_size=4, lengths=lengths, group_by_length=True)
    b = EpochSampler(2000, seed=3, batch_size=4, lengths=lengths, group_by_length=True)
    plain = EpochSampler(2000, seed=3, batch_size=4)
    e0 = a.batches(0)
    assert e0 == b.batches(0) and e0 != a.batches(1)  # same seed and epoch, same batches
    assert sorted(i for batch in e0 for i in batch) == list(range(2000))
    assert [len(batch) for batch in e0] == [4] * 500
    grouped, random_ = padded_share(lengths, e0), padded_share(lengths, plain.batches(0))
    assert random_ > 0.3 and grouped < 0.6 * random_
    starts = [max(lengths[batch[0]][1:]) for batch in e0[:20]]
    assert starts != sorted(starts)  # the batches are shuffled, not short-to-long


def test_budgeted_resume_walks_epochs_of_different_lengths():
    lengths = lognormal_lengths(60, seed=1)
    kw = dict(batch_size=4, lengths=lengths, max_tokens=900)
    full = ResumableLoader(list(range(60)), seed=2, **kw)
    epochs = []
    for e in range(3):
        full.epoch_sampler.set_epoch(e)
        epochs.append([b.tolist() for b in full])
    assert len({len(e) for e in epochs}) > 1  # the budget makes epochs differ in batch count
    assert all(padded_row_tokens(lengths, b) <= 900 or len(b) == 1 for e in epochs for b in e)
    consumed = len(epochs[0]) + len(epochs[1]) + 2
    resumed = ResumableLoader(list(range(60)), seed=2, **kw)
    resumed.resume_from(consumed)
    assert resumed.epoch_sampler.epoch == 2
    assert [b.tolist() for b in resumed] == epochs[2][2:]


def test_grouped_ranks_take_consecutive_batches_of_each_global_batch():
    lengths = lognormal_lengths(103, seed=2)
    single = EpochSampler(103, seed=1, batch_size=2, world=2, lengths=lengths, group_by_length=True)
    ranks = [ResumableLoader(list(range(103)), batch_size=2, seed=1, rank=r, world=2, lengths=lengths,
                             group_by_length=True) for r in (0, 1)]
    got = [[b.tolist() for b in loader] for loader in ranks]
    assert len(got[0]) == len(got[1]) == 25  # 51 full batches of 2 -> 25 global batches of 2 x 2
    assert [list(pair) for pair in zip(*got)] == single.global_batches(0)
    assert isinstance(ranks[0].batch_sampler, EpochBatchSampler)
    assert ranks[0].batch_sampler.sampler is ranks[0].epoch_sampler  # Lightning's set_epoch reaches it


def test_grouping_without_lengths_is_an_error():
    with pytest.raises(ValueError, match="group_by_length and max_tokens need one"):
        EpochSampler(5, seed=0, batch_size=2, group_by_length=True)


def test_datamodule_groups_by_length_and_keeps_a_token_budget():
    from prefopt.scoring.layout import token_counts
    from prefopt.data.datamodule import PreferenceDataModule
    from prefopt.data.tokenizer_builder import build_bpe_tokenizer

    tok = build_bpe_tokenizer(["one two three four five"] * 20, vocab_size=300)
    rng = random.Random(0)
    sizes = [rng.choice([1, 2, 12]) for _ in range(64)]  # a pair's two responses: alike in length
    rows = [{"prompt": "one two" * rng.randint(1, 6), "chosen": " three" * k,
             "rejected": " four" * (k + rng.randint(0, 1))} for k in sizes]

    def padding(**kw):
        dm = PreferenceDataModule(rows, [], tok, max_length=64, max_prompt_length=16, batch_size=4,
                                  eval_batch_size=4, seed=0, **kw)
        counts = [token_counts(b, shared=False) for b in dm.train_dataloader()]
        return 1 - sum(r for r, _ in counts) / sum(p for _, p in counts), [p for _, p in counts]

    plain, _ = padding()
    grouped, _ = padding(group_by_length=True)
    assert grouped < 0.6 * plain
    _, processed = padding(group_by_length=True, max_tokens_per_batch=120)
    longest = 2 * max(len(tok(r["prompt"])["input_ids"]) + 14 for r in rows)  # one pair alone may exceed it
    assert max(processed) <= max(120, longest)
