"""The IMDb task's gold reward: a TF-IDF + logistic-regression sentiment classifier (scikit-learn).

The reward of a response is P(positive | prompt + response), the classifier's probability that the
review text made of the prompt and its continuation is positive: a number in [0, 1] whose mean over
samples is directly the share of "positive" mass (0.5 is the balanced data's base rate). The
probability rather than its logit keeps the reward bounded, so one degenerate, extremely positive
sample cannot dominate a mean, and it matches the DPO paper's reward axis.

A classifier trained on whole reviews is much worse on the ~40 words it scores here (the pilot: 0.887
on full reviews, 0.75 on their first 40 words), so it is trained on short windows of the reviews
(the first 10-60 words, plus random runs of 10-60 words from anywhere in the review) and checked on
the first 40 words of held-out reviews as well as on whole ones. Used by `prefopt.tasks.imdb`;
exercised by `pytest tests/tasks/test_imdb_reward.py`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from prefopt.tasks.imdb_data import Review, windows

CHECK_WORDS = 40  # the held-out check scores the first 40 words: about prompt + 48 tokens


def train_classifier(
    reviews: list[Review], seed: int, windows_per_review: int = 8, min_words: int = 10,
    max_words: int = 60, c: float = 4.0,
) -> Any:
    """Fit TF-IDF (word 1-2-grams, sublinear tf) + logistic regression on short windows of `reviews`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    rng = random.Random(f"imdb-classifier-{seed}")
    texts, labels = [], []
    for review in reviews:
        for window in windows(review.text, rng, windows_per_review, min_words, max_words):
            texts.append(window)
            labels.append(review.label)
    if len(set(labels)) < 2:
        raise ValueError("the classifier's training reviews hold only one label; use more of them")
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000),
        LogisticRegression(C=c, max_iter=1000, random_state=seed),
    )
    model.fit(texts, labels)
    return model


def first_words(text: str, n: int) -> str:
    return " ".join(text.split(" ")[:n])


def accuracy(model: Any, reviews: list[Review], words: int | None = None) -> float:
    """Share of `reviews` classified right, on their first `words` words (None: the whole review)."""
    texts = [r.text if words is None else first_words(r.text, words) for r in reviews]
    predicted = model.predict(texts)
    return sum(int(p) == r.label for p, r in zip(predicted, reviews)) / len(reviews)


@dataclass
class SentimentReward:
    """Gold reward of (prompt, response) strings: P(positive | prompt + response) in [0, 1].

    A picklable callable (prompts, responses) -> rewards, the form `prefopt.eval.evaluate.evaluate` expects.
    `model` is the fitted scikit-learn pipeline (anything with `predict_proba` over texts whose
    second column is the positive class).
    """

    model: Any

    def probability(self, texts: list[str]) -> list[float]:
        """P(positive) of each text."""
        if not texts:
            return []
        return [float(p) for p in self.model.predict_proba(list(texts))[:, 1]]

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return self.probability([p + r for p, r in zip(prompts, responses)])
