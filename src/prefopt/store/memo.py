"""In-process memo of what every run of a sweep would otherwise load again: task artifacts, the
starting policy, and the tokenized pairs.

A sweep runs many jobs in one process (Hydra's basic launcher) or in a few long-lived workers (the
joblib launcher's loky workers persist between jobs). Each job used to pay again for reading the
task's pairs and prompts and for loading the starting policy and tokenizer from disk. Here they are
kept per process, keyed by a fingerprint of everything they depend on (the task config, the model
config, the cache folder, a data file's size and modification time, the seed), and each run gets its
own copies: a run that mutates or crashes leaves the memo as it was, and a build that fails is not
memoized (the next run tries again and fails on its own). Policies of more than MAX_POLICY_PARAMS
parameters, and tokenized data of more than MAX_TOKENIZED_TOKENS tokens, are not kept (holding them
costs more memory than rebuilding them costs time). Tokenized pairs are keyed by the rows' content,
the tokenizer's own serialization and the truncation settings (on the sort task, tokenizing the
pairs was a fifth of each 200-step run).
Exercised by `pytest tests/test_memo.py` and every multirun (`python src/run.py -m ...`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from prefopt.store.cache import fingerprint

MAX_ENTRIES = 4  # per kind; a sweep over tasks or models keeps the most recent
MAX_POLICY_PARAMS = 300_000_000
MAX_TOKENIZED_TOKENS = 5_000_000

_artifacts: OrderedDict[str, Any] = OrderedDict()
_policies: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
_tokenized: OrderedDict[str, Any] = OrderedDict()
stats = {"artifacts_hits": 0, "policy_hits": 0, "tokenized_hits": 0}


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _file_state(source_cfg: Any) -> Any:
    """Size and mtime of a data file or folder the source reads (`path`), so an edited file is re-read."""
    path = (source_cfg or {}).get("path") if isinstance(source_cfg, dict) else None
    if not path or not os.path.exists(path):
        return None
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _remember(table: OrderedDict, key: str, value: Any) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > MAX_ENTRIES:
        table.popitem(last=False)


def _copy_artifacts(artifacts: Any) -> Any:
    """A run's own TaskArtifacts: fresh lists and info (rows and prompts themselves are never mutated)."""
    return dataclasses.replace(
        artifacts, train_rows=list(artifacts.train_rows), eval_rows=list(artifacts.eval_rows),
        eval_prompts=list(artifacts.eval_prompts), info=copy.deepcopy(artifacts.info),
        generation=dict(artifacts.generation),
    )


def task_artifacts(source: Any, source_cfg: Any, start: Any, model_cfg: Any, cache_root: Path) -> Any:
    """`source.build(start, model_cfg, cache_root)`, once per process for the same settings (`start` follows
    from the model config and the source: prefopt.models.choose.choose_start)."""
    plain = _plain(source_cfg)
    key = fingerprint("artifacts", plain, _plain(model_cfg), str(cache_root), _file_state(plain))
    if key not in _artifacts:
        _remember(_artifacts, key, source.build(start, model_cfg, cache_root))
    else:
        stats["artifacts_hits"] += 1
        _artifacts.move_to_end(key)
    return _copy_artifacts(_artifacts[key])


def starting_policy(load: Callable[[], tuple[Any, Any]], *depends_on: Any) -> tuple[Any, Any]:
    """(model, tokenizer) of `load()`, loaded once per process for equal `depends_on` (configs, paths,
    seed: everything `load` reads); a copy each time."""
    key = fingerprint("policy", *[_plain(x) if OmegaConf.is_config(x) else str(x) for x in depends_on])
    if key in _policies:
        stats["policy_hits"] += 1
        _policies.move_to_end(key)
        model, tokenizer = _policies[key]
        return copy.deepcopy(model), copy.deepcopy(tokenizer)
    model, tokenizer = load()
    if sum(p.numel() for p in model.parameters()) <= MAX_POLICY_PARAMS:
        _remember(_policies, key, (copy.deepcopy(model), copy.deepcopy(tokenizer)))
    return model, tokenizer


def tokenizer_identity(tokenizer: Any) -> str:
    """A fingerprint of what a tokenizer does: its serialized pipeline, chat template, special ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return fingerprint(type(tokenizer).__name__, backend.to_str() if backend is not None else repr(tokenizer),
                       getattr(tokenizer, "chat_template", None),
                       *[getattr(tokenizer, f"{t}_token_id", None) for t in ("bos", "eos", "pad", "unk")])


def tokenized(build: Callable[[], tuple[list, Any]], rows: list, tokenizer: Any, *settings: Any) -> tuple[list, Any]:
    """`build()` -> (items, stats) of tokenizing `rows` with `tokenizer` under `settings`, once per
    process; each call gets its own list and stats (the item dicts are read-only to their users)."""
    key = fingerprint("tokenized", fingerprint(rows), tokenizer_identity(tokenizer), *settings)
    if key in _tokenized:
        stats["tokenized_hits"] += 1
        _tokenized.move_to_end(key)
    else:
        items, info = build()
        size = sum(len(it["prompt_ids"]) + len(it["chosen_ids"]) + len(it["rejected_ids"]) for it in items)
        if size > MAX_TOKENIZED_TOKENS:
            return items, info
        _remember(_tokenized, key, (items, info))
    items, info = _tokenized[key]
    return list(items), copy.deepcopy(info)


def clear() -> None:
    """Forget everything (tests)."""
    _artifacts.clear()
    _policies.clear()
    _tokenized.clear()
    stats.update(artifacts_hits=0, policy_hits=0, tokenized_hits=0)
