"""Writing `results.json`: status, metrics, resolved config, package versions, seed, wall time.

The file is written atomically (temp file + fsync + rename, prefopt.store.atomic) so a reader never sees
half of it; a failed write (a full disk) removes the temp file, says so on stderr together with what it
could not record (the run's own error, stage, traceback and metrics: the real cause is never lost) and
exits 1 (tests/test_preflight.py, tests/test_late_failures.py). Its keys are a contract users rely on
(README.md, "What a run writes"); `src/analyze.py` and resumable sweeps read it.
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
from prefopt.store.atomic import write_text_atomic

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


class ResultsNotWritten(SystemExit):
    """results.json could not be written; stderr has said why and what it would have recorded (exit 1)."""


def write_results(path: str | os.PathLike, **fields: Any) -> Path:
    """Write `fields` (status, metrics, config, seed, wall_time_s, ...) plus versions as JSON, whole (temp +
    fsync + rename); a failed write says why on stderr, with the outcome it could not record, and exits 1."""
    path = Path(path)
    payload = {"versions": package_versions(), "finished_at": round(time.time(), 1), **to_jsonable(fields)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False))
    except OSError as err:  # a full disk, a folder made read-only mid-run: say so, never leave a .tmp
        log.error("\n".join([f"error: could not write {path} ({err.strerror or err}); the run's outcome is not "
                             "recorded", *unrecorded(payload)]), extra=PLAIN)
        raise ResultsNotWritten(1) from None
    return path


def unrecorded(payload: dict[str, Any]) -> list[str]:
    """The lines that stand in on stderr for a results.json that could not be written: the run's own
    error (the real cause of a failure, e.g. the disk that filled during the export), its stage and
    traceback, and the metrics it had computed."""
    status = payload.get("status")
    lines = []
    if status not in (None, "completed") or payload.get("error"):
        stage = f" during {payload['stage']}" if payload.get("stage") else ""
        lines.append(f"the run {status or 'stopped'}{stage}: {payload.get('error') or 'no error recorded'}")
    if payload.get("traceback"):
        lines.append(str(payload["traceback"]).rstrip())
    if payload.get("metrics"):
        lines.append(f"its metrics: {json.dumps(payload['metrics'], sort_keys=True)}")
    return lines


def read_results(path: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed results.json, or None if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
