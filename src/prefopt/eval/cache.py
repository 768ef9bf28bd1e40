"""The starting policy's side of the evaluation, computed once and shared by the runs of a sweep.

Every run of a β sweep evaluates against the same starting policy on the same prompts with the same
seed, so its samples, their text and their oracle rewards (`prefopt.eval.evaluate.start_side`) are the same in
every run. They are cached in `<cache_dir>/eval_start/<key>/start.json`, keyed by the starting
policy's weights, the prompts' token ids, the tokenizer's vocabulary, the task (its config: the oracle
comes from it) and the sampling settings. A judge other than the oracle (prefopt.eval.judged) caches its
scores of the starting policy's answers in `<cache_dir>/eval_judged_start/<key>/start.json`, the key adding
the judge's fingerprint and the prompts' ids (`cached_judged_start`). `eval.cache_start=false` turns both
off. Where the cache cannot hold it (read-only, or its lock is held too long) it is computed for the run
only, so a trained run is never lost at its last step (tests/test_cache_faults.py). Used by
`prefopt.run.steps`; exercised by `pytest tests/test_eval.py tests/test_judge.py`.
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
from prefopt.contracts.fingerprints import weights_fingerprint

log = get_logger()
FORMAT_VERSION = 1


def start_key(reference: Any, tokenizer: Any, prompts: list[Any], task: Any, reference_context=None, *,
              prompt_ids: list[list[int]] | None = None, judge: Any = None, **sampling: Any) -> str:
    """Fingerprint of everything the starting policy's evaluation side depends on: `prompt_ids` when the
    prompts are not strings the tokenizer encodes alone (chat rows), `judge`'s fingerprint for its scores."""
    with (reference_context or nullcontext)():
        weights = weights_fingerprint(reference)
    vocab = sorted(tokenizer.get_vocab().items()) if hasattr(tokenizer, "get_vocab") else len(tokenizer)
    ids = prompt_ids if prompt_ids is not None else tokenizer(list(prompts))["input_ids"]
    judged = ({"judge": judge},) if judge is not None else ()  # the oracle's side: the key it always had
    return fingerprint(FORMAT_VERSION, weights, ids, fingerprint(vocab), task, sampling, *judged)


def cached_json(cache_root: Path, kind: str, key: str, compute: Callable[[], dict]) -> tuple[dict, str]:
    """(value, "hit" | "built" | "computed, not cached"): `<cache_root>/<kind>/<key>/start.json`, or
    `compute()` stored there; where the cache cannot hold it, computed for this run only."""
    status = "hit"

    def build(out: Path) -> None:
        nonlocal status
        status = "built"
        (out / "start.json").write_text(json.dumps(compute()))

    try:
        folder = cached_dir(cache_root, kind, key, build)
    except CacheError as err:  # a read-only cache without it, a lock held too long: the run goes on
        log.warning(f"the starting policy's evaluation is computed for this run only: {err}")
        return compute(), "computed, not cached"
    return json.loads((folder / "start.json").read_text()), status


def cached_start_side(cache_root: Path, reference: Any, tokenizer: Any, prompts: list[str],
                      oracle: Callable[[list[str], list[str]], list[float]], task: Any,
                      reference_context: Callable[[], Any] | None = None, **sampling: Any) -> tuple[dict, str]:
    """(start_side, "hit" | "built"): the starting policy's samples and rewards, from the cache or
    computed now and stored. `sampling`: max_new_tokens, temperature, seed, batch_size."""
    key = start_key(reference, tokenizer, prompts, task, reference_context, **sampling)
    return cached_json(cache_root, "eval_start", key, lambda: start_side(
        reference, tokenizer, prompts, oracle, reference_context=reference_context, **sampling))


def cached_judged_start(cache_root: Path, reference: Any, tokenizer: Any, prompts: list[Any],
                        prompt_ids: list[list[int]], judge_fingerprint: Any, task: Any,
                        compute: Callable[[], dict], reference_context: Callable[[], Any] | None = None,
                        **sampling: Any) -> tuple[dict, str]:
    """(side, status): the starting policy's answers scored by a judge (prefopt.eval.judged), keyed as
    `cached_start_side` is plus the judge's fingerprint, in `<cache_dir>/eval_judged_start/`."""
    key = start_key(reference, tokenizer, prompts, task, reference_context, prompt_ids=prompt_ids,
                    judge=judge_fingerprint, **sampling)
    return cached_json(cache_root, "eval_judged_start", key, compute)
