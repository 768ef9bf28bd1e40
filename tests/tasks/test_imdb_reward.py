"""Tests of the IMDb gold reward (prefopt.tasks.imdb_reward): the classifier beats an accuracy floor on
held-out reviews, short texts included, and the reward is P(positive | prompt + response)."""

import pytest

from prefopt.tasks.imdb_data import load_reviews, split_reviews
from prefopt.tasks.imdb_reward import SentimentReward, accuracy, first_words, train_classifier


@pytest.fixture(scope="module")
def classifier():
    pool = split_reviews(load_reviews(), seed=0)["classifier"]
    test, train = pool[:400], pool[400:2400]
    return train_classifier(train, seed=0, windows_per_review=4), test, train


def test_classifier_beats_floor_on_held_out_reviews(classifier):
    model, test, train = classifier
    assert not {r.text for r in test} & {r.text for r in train}
    # small-scale numbers (2,000 training reviews): about 0.72 on 40 words, 0.85 on whole reviews;
    # the default build (8,000 reviews x 8 windows) reaches 0.78 and 0.89
    assert accuracy(model, test, words=40) > 0.66
    assert accuracy(model, test) > 0.78
    assert accuracy(model, test, words=40) < accuracy(model, test)  # short texts are harder


def test_reward_is_probability_of_positive_on_prompt_plus_response(classifier):
    reward = SentimentReward(classifier[0])
    good, bad = reward(["This movie was", "This movie was"], [" wonderful, a great film.", " awful, boring, the worst."])
    assert 0.0 <= bad < 0.5 < good <= 1.0
    assert reward(["The film is"], [" great"]) == reward.probability(["The film is great"])
    assert reward.probability([]) == []
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        reward(["a", "b"], ["c"])


def test_first_words():
    assert first_words("a b c d", 2) == "a b" and first_words("a b", 5) == "a b"
