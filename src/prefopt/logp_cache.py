"""Reference and marginal log-probs computed once and cached on disk (placeholder: no caching yet).

`attach_caches` is called by the runner after the module and data are built; it returns facts for
results.json (whether a cache was used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def attach_caches(cfg: Any, module: Any, data: Any, cache_root: Path) -> dict[str, Any]:
    return {"logp_cache": "off"}
