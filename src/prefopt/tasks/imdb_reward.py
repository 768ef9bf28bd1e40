"""The IMDb task's gold reward: a TF-IDF + logistic-regression sentiment classifier (scikit-learn).

The reward of a response is P(positive | prompt + response), the classifier's probability that the
review text made of the prompt and its continuation is positive: a number in [0, 1] whose mean over
samples is directly the share of "positive" mass (0.5 is the balanced data's base rate). The
probability rather than its logit keeps the reward bounded, so one degenerate, extremely positive
sample cannot dominate a mean, and it matches the DPO paper's reward axis.

A classifier trained on whole reviews is much worse on the ~40 words it scores here (the pilot: 0.887
on full reviews, 0.75 on their first 40 words), so it is trained on short windows of the reviews
(the first 10-60 words, plus random runs of 10-60 words from anywhere in the review) and checked on
the first 40 words of held-out reviews as well as on whole ones.

The fitted classifier is stored in the shared cache without pickle (a pickle runs code when read, so
whoever could write the cache could run code in every user's run): `classifier.json` holds the
vocabulary in column order and the vectorizer settings that scoring uses, `classifier.npz` the arrays
(idf, coef, intercept, classes), read with `np.load(allow_pickle=False)`. `load_classifier` checks
both against each other and gives a `TfidfLogisticScorer`, which scores with numpy alone (the same
tokens, tf, idf, l2 norm and logistic as scikit-learn: equal to its `predict_proba` to ~1e-15).
`prefopt.store.cache.cached_dir` writes the files in a temporary folder renamed into place and checks
their checksums before each use. Used by `prefopt.tasks.imdb`; exercised by
`pytest tests/tasks/test_imdb_reward.py tests/tasks/test_imdb_reward_format.py`.
"""

from __future__ import annotations

import json
import random
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefopt.errors import CacheError
from prefopt.tasks.imdb_data import Review, windows

CHECK_WORDS = 40  # the held-out check scores the first 40 words: about prompt + 48 tokens
CLASSIFIER_JSON, CLASSIFIER_ARRAYS = "classifier.json", "classifier.npz"
CLASSIFIER_FORMAT = "prefopt-tfidf-logreg-1"  # in the reward's cache key: bump when the stored form changes
SCORED_SETTINGS = ("lowercase", "token_pattern", "ngram_range", "sublinear_tf")  # what scoring reads
RECORDED_SETTINGS = ("min_df", "max_df", "max_features", "smooth_idf", "norm", "use_idf")  # for the record
# vectorizer settings the numpy scorer does not reproduce: they must keep these values
FIXED_SETTINGS = {"analyzer": "word", "input": "content", "strip_accents": None, "preprocessor": None,
                  "tokenizer": None, "stop_words": None, "binary": False, "norm": "l2", "use_idf": True}
SAME_SCORE_TOLERANCE = 1e-9  # the build checks the stored classifier against the fitted one to this


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
    `model` is anything with `predict_proba` over texts whose second column is the positive class: the
    `TfidfLogisticScorer` read from the cache, or the fitted scikit-learn pipeline itself.
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


# ---- the stored classifier: written and read without pickle --------------------------------------
@dataclass(eq=False)
class TfidfLogisticScorer:
    """A fitted TF-IDF + binary logistic regression, scored with numpy: `predict_proba(texts)` is
    scikit-learn's pipeline's (columns in `classes` order; column 1 is P(positive) for labels 0/1).

    `terms[i]` is the n-gram of column i; `idf`, `coef` are per column; the settings are the
    vectorizer's (`SCORED_SETTINGS`)."""

    terms: list[str]
    idf: np.ndarray
    coef: np.ndarray
    intercept: float
    classes: np.ndarray
    lowercase: bool
    token_pattern: str
    ngram_range: tuple[int, int]
    sublinear_tf: bool
    columns: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.columns = {term: i for i, term in enumerate(self.terms)}
        self._token = re.compile(self.token_pattern)

    def ngrams(self, text: str) -> list[str]:
        """The text's features as scikit-learn's word analyzer makes them (lowercase, regex, n-grams)."""
        tokens = self._token.findall(text.lower() if self.lowercase else text)
        low, high = self.ngram_range
        out = list(tokens) if low == 1 else []
        for n in range(max(low, 2), min(high, len(tokens)) + 1):
            out.extend(" ".join(tokens[i: i + n]) for i in range(len(tokens) - n + 1))
        return out

    def decision_function(self, texts: list[str]) -> np.ndarray:
        """coef . l2-normalised tf-idf + intercept, per text (a text with no known n-gram: the intercept)."""
        rows, cols, counts = [], [], []
        for row, text in enumerate(texts):
            found = Counter(self.columns[g] for g in self.ngrams(text) if g in self.columns)
            rows.extend([row] * len(found))
            cols.extend(found)
            counts.extend(found.values())
        rows_a, cols_a = np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)
        tf = np.asarray(counts, dtype=np.float64)
        if self.sublinear_tf:
            tf = np.log(tf) + 1.0
        weights = tf * self.idf[cols_a]
        norms = np.sqrt(np.bincount(rows_a, weights * weights, minlength=len(texts)))
        dots = np.bincount(rows_a, weights * self.coef[cols_a], minlength=len(texts))
        return np.divide(dots, norms, out=np.zeros(len(texts)), where=norms > 0) + self.intercept

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        from scipy.special import expit  # scikit-learn's own logistic

        positive = expit(self.decision_function(list(texts)))
        return np.stack([1.0 - positive, positive], axis=1)


def _fitted_parts(model: Any) -> tuple[Any, Any]:
    """The pipeline's TfidfVectorizer and binary LogisticRegression, checked to be what the scorer
    reproduces (a ValueError naming the setting otherwise)."""
    vectorizer, regression = model[0], model[-1]
    params = vectorizer.get_params()
    for key, value in FIXED_SETTINGS.items():
        if params.get(key) != value:
            raise ValueError(f"the stored classifier needs TfidfVectorizer({key}={value!r}), got {params.get(key)!r}")
    if np.dtype(params.get("dtype")) != np.float64:
        raise ValueError(f"the stored classifier needs TfidfVectorizer(dtype=float64), got {params.get('dtype')}")
    if len(regression.classes_) != 2 or regression.coef_.shape != (1, len(vectorizer.vocabulary_)):
        raise ValueError(f"the stored classifier must be binary over the vocabulary, got classes "
                         f"{list(regression.classes_)} and coef_ of shape {regression.coef_.shape}")
    return vectorizer, regression


def save_classifier(model: Any, folder: Path) -> None:
    """Write the fitted pipeline as classifier.json + classifier.npz in `folder` (no pickle: the
    arrays are plain numbers). The caller writes into a temporary folder (`cached_dir` does)."""
    vectorizer, regression = _fitted_parts(model)
    params = vectorizer.get_params()
    terms = [""] * len(vectorizer.vocabulary_)
    for term, column in vectorizer.vocabulary_.items():
        terms[int(column)] = term
    settings = {key: params[key] for key in SCORED_SETTINGS + RECORDED_SETTINGS}
    settings["ngram_range"] = list(settings["ngram_range"])
    header = {"format": CLASSIFIER_FORMAT, "settings": settings, "terms": terms}
    (Path(folder) / CLASSIFIER_JSON).write_text(json.dumps(header), encoding="utf-8")
    np.savez(Path(folder) / CLASSIFIER_ARRAYS, idf=np.asarray(vectorizer.idf_, dtype=np.float64),
             coef=np.asarray(regression.coef_[0], dtype=np.float64),
             intercept=np.asarray(regression.intercept_, dtype=np.float64), classes=np.asarray(regression.classes_))


def _damaged(path: Path, why: str) -> CacheError:
    why = " ".join(str(why).split())  # one line, whatever the underlying error said
    return CacheError(f"{path} is not a usable gold-reward classifier ({why}); delete {path.parent} to rebuild it")


def _read_header(path: Path) -> dict[str, Any]:
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise _damaged(path, f"{type(err).__name__}: {err}") from None
    if not isinstance(header, dict) or header.get("format") != CLASSIFIER_FORMAT:
        raise _damaged(path, f"its format is not {CLASSIFIER_FORMAT}")
    settings, terms = header.get("settings"), header.get("terms")
    if not isinstance(settings, dict) or any(key not in settings for key in SCORED_SETTINGS):
        raise _damaged(path, f"its settings must hold {', '.join(SCORED_SETTINGS)}")
    if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms) or len(set(terms)) != len(terms):
        raise _damaged(path, "its terms must be a list of distinct strings")
    ngrams = settings["ngram_range"]
    if not (isinstance(ngrams, list) and len(ngrams) == 2 and all(isinstance(n, int) for n in ngrams)
            and 1 <= ngrams[0] <= ngrams[1]):
        raise _damaged(path, f"ngram_range {ngrams!r} is not two integers 1 <= low <= high")
    if not isinstance(settings["token_pattern"], str) or not isinstance(settings["lowercase"], bool) \
            or not isinstance(settings["sublinear_tf"], bool):
        raise _damaged(path, "token_pattern must be a string, lowercase and sublinear_tf booleans")
    return header


def _read_arrays(path: Path, n_terms: int) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as stored:  # an object array or a pickle: ValueError
            arrays = {name: stored[name] for name in ("idf", "coef", "intercept", "classes")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        why = "it holds pickled data, which is never loaded" if "pickle" in str(err) else f"{type(err).__name__}: {err}"
        raise _damaged(path, why) from None
    shapes = {"idf": (n_terms,), "coef": (n_terms,), "intercept": (1,), "classes": (2,)}
    for name, shape in shapes.items():
        if arrays[name].shape != shape:
            raise _damaged(path, f"{name} has shape {arrays[name].shape}, the {n_terms}-term vocabulary needs {shape}")
    for name in ("idf", "coef", "intercept"):
        if arrays[name].dtype != np.float64 or not np.isfinite(arrays[name]).all():
            raise _damaged(path, f"{name} must hold finite float64 numbers")
    return arrays


def load_classifier(folder: Path) -> TfidfLogisticScorer:
    """The classifier `save_classifier` wrote in `folder`, checked, without unpickling anything.
    A missing or malformed file is a one-line CacheError naming it."""
    folder = Path(folder)
    header = _read_header(folder / CLASSIFIER_JSON)
    settings, terms = header["settings"], header["terms"]
    arrays = _read_arrays(folder / CLASSIFIER_ARRAYS, len(terms))
    try:
        re.compile(settings["token_pattern"])
    except re.error as err:
        raise _damaged(folder / CLASSIFIER_JSON, f"token_pattern does not compile: {err}") from None
    return TfidfLogisticScorer(
        terms=terms, idf=arrays["idf"], coef=arrays["coef"], intercept=float(arrays["intercept"][0]),
        classes=arrays["classes"], lowercase=settings["lowercase"], token_pattern=settings["token_pattern"],
        ngram_range=(settings["ngram_range"][0], settings["ngram_range"][1]), sublinear_tf=settings["sublinear_tf"],
    )


def check_same_scores(model: Any, scorer: TfidfLogisticScorer, texts: list[str]) -> float:
    """The largest |P(positive)| difference between the fitted pipeline and the stored scorer on `texts`;
    a RuntimeError if it exceeds SAME_SCORE_TOLERANCE (the stored form would move the reward)."""
    if not texts:
        return 0.0
    gap = float(np.max(np.abs(model.predict_proba(texts)[:, 1] - scorer.predict_proba(texts)[:, 1])))
    if not gap <= SAME_SCORE_TOLERANCE:
        raise RuntimeError(f"the stored classifier scores differ from the fitted one by {gap:.3g} "
                           f"(more than {SAME_SCORE_TOLERANCE}); the scorer no longer matches scikit-learn")
    return gap
