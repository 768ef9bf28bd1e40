"""Writing `results.json`: status, metrics, resolved config, package versions, seed, wall time.

The file is written atomically (temp file + rename) so a reader never sees half of it; a failed write
(a full disk) removes the temp file, says so on stderr and exits 1 (tests/test_preflight.py). The contract
is in DESIGN.md; `src/analyze.py` and resumable sweeps read it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from prefopt.log import PLAIN, get_logger

log = get_logger()
PACKAGES = ("prefopt", "torch", "transformers", "lightning", "hydra-core", "omegaconf", "datasets", "wandb")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def to_jsonable(value: Any) -> Any:
    """Tensors and numpy scalars to floats; non-finite floats to None (JSON has no NaN)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def write_results(path: str | os.PathLike, **fields: Any) -> Path:
    """Write `fields` (status, metrics, config, seed, wall_time_s, ...) plus versions as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"versions": package_versions(), "finished_at": round(time.time(), 1), **to_jsonable(fields)}
    tmp = path.with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False))
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a folder made read-only mid-run: say so, never leave a .tmp
        tmp.unlink(missing_ok=True)
        log.error(f"error: could not write {path} ({err.strerror or err}); the run's outcome is not recorded",
                  extra=PLAIN)
        raise SystemExit(1) from None
    return path


def read_results(path: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed results.json, or None if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
