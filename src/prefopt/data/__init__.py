"""The data layer: preference files -> normalized rows -> token ids -> collated pair batches.

formats.py reads files/folders/hub ids, rows.py validates and normalizes rows, tokenize.py makes
token ids, collate.py builds the batch tensors, datamodule.py is the Lightning DataModule, source.py
the `data=jsonl|ultrafeedback` Task, tokenizer_builder.py the tiny model's BPE tokenizer.
Names are imported lazily so that `import prefopt.data.formats` does not pull in Lightning.
Exercised by `pytest tests/data`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataError": "errors",
    "load_rows": "formats",
    "load_preference_rows": "formats",
    "normalize_row": "rows",
    "normalize_rows": "rows",
    "tokenize_row": "tokenize",
    "PairCollator": "collate",
    "pad_right": "collate",
    "PreferenceDataModule": "datamodule",
    "PreferenceFileSource": "source",
    "build_bpe_tokenizer": "tokenizer_builder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'prefopt.data' has no attribute '{name}'")
    return getattr(importlib.import_module(f"prefopt.data.{_EXPORTS[name]}"), name)
