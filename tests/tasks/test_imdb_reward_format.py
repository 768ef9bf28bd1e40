"""Tests of how the IMDb gold reward is stored and read (prefopt.tasks.imdb_reward.save_classifier /
load_classifier / TfidfLogisticScorer, and prefopt.tasks.imdb.ImdbTask's reward folder): hand-worked
scores, the same P(positive) as scikit-learn's pipeline, one-line CacheErrors for damaged files, and a
planted pickle that is never run nor used."""

import json
import math
import pickle

import numpy as np
import pytest

import prefopt.store.cache as cache
from prefopt.errors import CacheError
from prefopt.store.cache import cached_dir, fingerprint, write_manifest
from prefopt.tasks.imdb import ImdbTask
from prefopt.tasks.imdb_data import Review, load_reviews, split_reviews
from prefopt.tasks.imdb_reward import (
    CLASSIFIER_ARRAYS, CLASSIFIER_JSON, SentimentReward, TfidfLogisticScorer, first_words, load_classifier,
    save_classifier, train_classifier,
)

POSITIVE = [
    "A wonderful film with a great cast and a moving story.", "I loved every minute, brilliant acting.",
    "Beautiful photography and a superb score, a real delight.", "The best movie I have seen this year.",
    "Funny, warm and clever; the whole family enjoyed it.", "An excellent script and a fantastic lead.",
    "Gripping from start to finish, a masterpiece.", "Charming, heartfelt and beautifully made.",
    "Great direction, great music, great fun.", "A touching story told with real skill and love.",
    "Highly recommended: smart, funny and moving.", "Perfect casting and a wonderful ending.",
    "I was thrilled; the acting is superb and the plot is clever.", "A joy to watch, brilliant and fresh.",
    "Loved it. Fantastic performances all round.", "Moving, funny and beautiful, a great film.",
]
NEGATIVE = [
    "A terrible film with a boring cast and a dull story.", "I hated every minute, awful acting.",
    "Ugly photography and a grating score, a real chore.", "The worst movie I have seen this year.",
    "Stupid, cold and lazy; the whole family was bored.", "A dreadful script and a wooden lead.",
    "Tedious from start to finish, a mess.", "Clumsy, cynical and badly made.",
    "Poor direction, poor music, no fun.", "A pointless story told with no skill at all.",
    "Avoid it: dumb, dull and slow.", "Awful casting and a stupid ending.",
    "I was bored; the acting is wooden and the plot is silly.", "A waste of time, boring and stale.",
    "Hated it. Terrible performances all round.", "Boring, ugly and stupid, an awful film.",
]
UNSEEN = ["What a great, moving film!", "Boring and awful.", "", "zzqx qqq", "GREAT great Great.",
          "Un film épatant, great fun 電影", "the the the the", "not good, not bad, just a film"]


class Plant:
    """A pickle whose loading creates `marker` (as a malicious classifier.joblib would run code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def hand_scorer(sublinear_tf=True, ngram_range=(1, 1)):
    return TfidfLogisticScorer(terms=["bad", "good"], idf=np.array([1.0, 2.0]), coef=np.array([-1.0, 3.0]),
                               intercept=0.5, classes=np.array([0, 1]), lowercase=True,
                               token_pattern=r"(?u)\b\w\w+\b", ngram_range=ngram_range, sublinear_tf=sublinear_tf)


@pytest.fixture(scope="module")
def hand_model():
    reviews = [Review(t, 1) for t in POSITIVE] + [Review(t, 0) for t in NEGATIVE]
    return train_classifier(reviews, seed=0, windows_per_review=2, min_words=3, max_words=12)


def test_hand_worked_scores():
    # "Good good film": good x2, tf 1 + ln 2, l2-normalised to 1 -> z = 3 + 0.5; "film": no term -> z = 0.5
    # "good bad": weights good 2, bad 1 -> z = (3*2 - 1*1)/sqrt(5) + 0.5 = sqrt(5) + 0.5
    p = hand_scorer().predict_proba(["Good good film", "good bad", "film"])
    assert p[:, 1].tolist() == pytest.approx([1 / (1 + math.exp(-3.5)), 0.9391216822826352, 0.6224593312018546],
                                             abs=1e-15)
    assert p.sum(axis=1).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-15)
    # "good good bad": sublinear weights good 2*(1 + ln 2) = 3.3863, bad 1 -> z = (3*3.3863 - 1)/|.| + 0.5 = 3.0940
    assert hand_scorer().decision_function(["good good bad"])[0] == pytest.approx(3.0939507031859774, abs=1e-14)
    # raw counts: good 2*2 = 4, bad 1 -> z = (12 - 1)/sqrt(17) + 0.5
    assert hand_scorer(sublinear_tf=False).decision_function(["good good bad"])[0] == pytest.approx(
        11 / math.sqrt(17) + 0.5, abs=1e-14)
    assert hand_scorer(ngram_range=(1, 2)).ngrams("Not GOOD, a film!") == [
        "not", "good", "film", "not good", "good film"]  # "a": one letter, not a token
    assert hand_scorer(ngram_range=(2, 3)).ngrams("x aa bb cc") == ["aa bb", "bb cc", "aa bb cc"]


def test_stored_classifier_scores_as_the_fitted_pipeline(hand_model, tmp_path):
    save_classifier(hand_model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CLASSIFIER_JSON, CLASSIFIER_ARRAYS]
    header = json.loads((tmp_path / CLASSIFIER_JSON).read_text())
    assert header["settings"]["ngram_range"] == [1, 2] and header["settings"]["sublinear_tf"] is True
    assert len(header["terms"]) == len(hand_model[0].vocabulary_)
    scorer = load_classifier(tmp_path)
    texts = POSITIVE + NEGATIVE + UNSEEN
    expected = hand_model.predict_proba(texts)
    assert np.abs(scorer.predict_proba(texts) - expected).max() <= 1e-9
    no_term = 1 / (1 + math.exp(-hand_model[-1].intercept_[0]))  # "": no known n-gram, z = the intercept
    assert expected[texts.index(""), 1] == pytest.approx(no_term, abs=1e-15)
    prompts, responses = ["This movie was"] * 2, [" great and moving.", " boring and awful."]
    old, new = SentimentReward(hand_model)(prompts, responses), SentimentReward(scorer)(prompts, responses)
    assert new == pytest.approx(old, abs=1e-9) and new[0] > 0.5 > new[1]


def test_real_reviews_get_the_same_reward(tmp_path):
    """The oracle's numbers do not move: the stored form scores held-out IMDb reviews as scikit-learn does."""
    pool = split_reviews(load_reviews(), seed=0)["classifier"]
    model = train_classifier(pool[300:900], seed=0, windows_per_review=2)
    save_classifier(model, tmp_path)
    texts = [first_words(r.text, 40) for r in pool[:300]] + [r.text for r in pool[:300]]
    assert np.abs(load_classifier(tmp_path).predict_proba(texts) - model.predict_proba(texts)).max() <= 1e-9


def _garbage_json(folder):
    (folder / CLASSIFIER_JSON).write_text("{not json")


def _short_coef(folder):
    with np.load(folder / CLASSIFIER_ARRAYS) as stored:
        arrays = dict(stored)
    np.savez(folder / CLASSIFIER_ARRAYS, **{**arrays, "coef": arrays["coef"][:-1]})


def _object_classes(folder):
    with np.load(folder / CLASSIFIER_ARRAYS) as stored:
        arrays = dict(stored)
    np.savez(folder / CLASSIFIER_ARRAYS, **{**arrays, "classes": np.array(["neg", {"x": 1}], dtype=object)})


def _pickle_as_arrays(folder):
    (folder / CLASSIFIER_ARRAYS).write_bytes(pickle.dumps(Plant(folder.parent / "ran")))


@pytest.mark.parametrize("damage, name, says", [
    (lambda f: (f / CLASSIFIER_JSON).unlink(), CLASSIFIER_JSON, "FileNotFoundError"),
    (_garbage_json, CLASSIFIER_JSON, "JSONDecodeError"),
    (lambda f: (f / CLASSIFIER_ARRAYS).unlink(), CLASSIFIER_ARRAYS, "FileNotFoundError"),
    (_short_coef, CLASSIFIER_ARRAYS, "coef has shape"),
    (_object_classes, CLASSIFIER_ARRAYS, "pickled data, which is never loaded"),
    (_pickle_as_arrays, CLASSIFIER_ARRAYS, "pickled data, which is never loaded"),
])
def test_damaged_files_are_one_line_cache_errors(hand_model, tmp_path, damage, name, says):
    folder = tmp_path / "reward"
    folder.mkdir()
    save_classifier(hand_model, folder)
    damage(folder)
    with pytest.raises(CacheError) as caught:
        load_classifier(folder)
    message = str(caught.value)
    assert str(folder / name) in message and says in message and "\n" not in message
    assert "delete" in message and not (tmp_path / "ran").exists()


def test_damaged_reward_folder_is_rebuilt(hand_model, tmp_path, monkeypatch):
    builds = []

    def build(out):
        builds.append(out)
        save_classifier(hand_model, out)

    folder = cached_dir(tmp_path, "imdb_reward", "k", build)
    (folder / CLASSIFIER_ARRAYS).write_bytes(b"\0" * (folder / CLASSIFIER_ARRAYS).stat().st_size)
    monkeypatch.setattr(cache, "_verified", {})  # a new process: the folder is checked again
    assert cached_dir(tmp_path, "imdb_reward", "k", build) == folder and len(builds) == 2
    assert load_classifier(folder).predict_proba(UNSEEN) == pytest.approx(hand_model.predict_proba(UNSEEN), abs=1e-9)


def test_reward_key_leaves_pickled_folders_behind_but_not_their_pairs():
    task = ImdbTask()
    old_key = fingerprint("imdb-reward", 1, task.data_key(), 0, 8000, 1000, 8, 4.0)  # the joblib folder's key
    assert task.classifier_key() == old_key != task.reward_key()  # pairs keep their key; the reward is refitted


def test_planted_pickle_is_neither_run_nor_used(hand_model, tmp_path):
    marker, control = tmp_path / "ran", tmp_path / "control"
    pickle.loads(pickle.dumps(Plant(control)))
    assert control.exists()  # the plant is live: unpickling it runs code
    payload = pickle.dumps(Plant(marker))
    task = ImdbTask()
    meta = {"accuracy_first_40_words": 0.9, "accuracy_full_review": 0.9, "test_positive_share": 0.5,
            "n_test": 10, "test_mean_reward_first_40_words": 0.5}

    def build(out):
        save_classifier(hand_model, out)
        (out / "meta.json").write_text(json.dumps(meta))

    folder = cached_dir(tmp_path, "imdb_reward", task.reward_key(), build)
    (folder / "classifier.joblib").write_bytes(payload)  # beside the real files
    old = tmp_path / "imdb_reward" / task.classifier_key()  # an older cache's folder, manifest and all
    old.mkdir()
    (old / "classifier.joblib").write_bytes(payload)
    (old / "meta.json").write_text(json.dumps(meta))
    write_manifest(old, task.classifier_key())
    reward, _ = task._gold_reward(tmp_path, task.reward_key(), {})
    assert isinstance(reward.model, TfidfLogisticScorer)
    assert reward.probability(UNSEEN) == pytest.approx(hand_model.predict_proba(UNSEEN)[:, 1].tolist(), abs=1e-9)
    # a folder at the current key holding only the pickle (its manifest rewritten to match) is refused
    (folder / CLASSIFIER_JSON).unlink()
    (folder / CLASSIFIER_ARRAYS).unlink()
    write_manifest(folder, task.reward_key())
    with pytest.raises(CacheError, match=CLASSIFIER_JSON):
        task._gold_reward(tmp_path, task.reward_key(), {})
    assert not marker.exists()
