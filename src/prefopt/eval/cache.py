"""The starting policy's side of the evaluation, computed once and shared by the runs of a sweep.

Every run of a β sweep evaluates against the same starting policy on the same prompts with the same
seed, so its samples, their text and their oracle rewards (`prefopt.eval.evaluate.start_side`) are the same in
every run. They are cached in `<cache_dir>/eval_start/<key>/start.json`, keyed by the starting
policy's weights, the prompts' token ids, the tokenizer's vocabulary, the task (its config: the oracle
comes from it) and the sampling settings. `eval.cache_start=false` turns it off. Where the cache cannot
hold it (read-only, or its lock is held too long) it is computed for the run only, so a trained run is
never lost at its last step (tests/test_cache_faults.py). Used by
`prefopt.run.runner`; exercised by `pytest tests/test_eval.py`.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from prefopt.store.cache import cached_dir, fingerprint
from prefopt.errors import CacheError
from prefopt.eval.evaluate import start_side
from prefopt.log import get_logger
from prefopt.train.logp_cache import weights_fingerprint

log = get_logger()
FORMAT_VERSION = 1


def start_key(reference: Any, tokenizer: Any, prompts: list[str], task: Any, reference_context=None,
              **sampling: Any) -> str:
    """Fingerprint of everything the starting policy's evaluation side depends on."""
    with (reference_context or nullcontext)():
        weights = weights_fingerprint(reference)
    vocab = sorted(tokenizer.get_vocab().items()) if hasattr(tokenizer, "get_vocab") else len(tokenizer)
    return fingerprint(FORMAT_VERSION, weights, tokenizer(list(prompts))["input_ids"], fingerprint(vocab), task,
                       sampling)


def cached_start_side(cache_root: Path, reference: Any, tokenizer: Any, prompts: list[str],
                      oracle: Callable[[list[str], list[str]], list[float]], task: Any,
                      reference_context: Callable[[], Any] | None = None, **sampling: Any) -> tuple[dict, str]:
    """(start_side, "hit" | "built"): the starting policy's samples and rewards, from the cache or
    computed now and stored. `sampling`: max_new_tokens, temperature, seed, batch_size."""
    key = start_key(reference, tokenizer, prompts, task, reference_context, **sampling)
    status = "hit"

    def build(out: Path) -> None:
        nonlocal status
        status = "built"
        side = start_side(reference, tokenizer, prompts, oracle, reference_context=reference_context, **sampling)
        (out / "start.json").write_text(json.dumps(side))

    try:
        folder = cached_dir(cache_root, "eval_start", key, build)
    except CacheError as err:  # a read-only cache without it, a lock held too long: the run goes on
        log.warning(f"the starting policy's evaluation is computed for this run only: {err}")
        side = start_side(reference, tokenizer, prompts, oracle, reference_context=reference_context, **sampling)
        return side, "computed, not cached"
    return json.loads((folder / "start.json").read_text()), status
