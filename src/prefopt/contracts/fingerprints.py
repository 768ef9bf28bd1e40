"""Fingerprints the caches are keyed by (contracts: no prefopt imports).

`fingerprint(*parts)`: a stable hex digest of JSON-able parts (prefopt.store.cache keys every artifact
by it); `weights_fingerprint(model)`: of a model's config and tensors (the log-prob tables' and the
evaluation caches' key). Exercised by `pytest tests/test_logp_cache.py tests/test_lora.py`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from prefopt.contracts.predicates import is_lora


def fingerprint(*parts: Any, length: int = 16) -> str:
    """A stable hex digest of JSON-able parts (dicts are key-sorted; other objects via str)."""
    digest = hashlib.sha256()  # the JSON text hashed in pieces: a 1 GB corpus is never one string (same digest)
    for chunk in json.JSONEncoder(sort_keys=True, default=str, separators=(",", ":")).iterencode(parts):
        digest.update(chunk.encode())
    return digest.hexdigest()[:length]


def weights_fingerprint(model: Any) -> str:
    """Digest of a model's config (without its path and version) and every tensor in its state dict.

    Of a LoRA (peft) model, the base model's: adapter tensors are left out and names are the plain
    model's, so a LoRA run and a full fine-tune of the same starting policy share tables.
    """
    import torch

    digest = hashlib.sha256()
    if is_lora(model):
        model = model.get_base_model()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        conf = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        digest.update(fingerprint(type(model).__name__, conf).encode())
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")
        t = tensor.detach()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)  # no copy
    return digest.hexdigest()[:16]
