"""Fingerprints and an on-disk artifact cache shared by tasks, models and log-prob caches.

An artifact (a tokenizer, an SFT policy, a pair file) lives in `<cache_root>/<kind>/<key>/`, where
`key` is a fingerprint of everything the artifact depends on. It is built into a temporary folder and
renamed into place, so a crash never leaves a half-written artifact that a later run would trust.
Exercised by every task build, e.g. `python src/run.py data=sort`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

DONE_MARKER = ".complete"


def fingerprint(*parts: Any, length: int = 16) -> str:
    """A stable hex digest of JSON-able parts (dicts are key-sorted; other objects via str)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def file_fingerprint(path: str | os.PathLike, length: int = 16) -> str:
    """Digest of a file's bytes, or of every file under a folder (names and bytes)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:length]


def default_cache_root() -> Path:
    """`$PREFOPT_CACHE`, else `~/.cache/prefopt`."""
    env = os.environ.get("PREFOPT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "prefopt"


def cached_dir(root: str | os.PathLike, kind: str, key: str, build: Callable[[Path], None]) -> Path:
    """Return `<root>/<kind>/<key>`, calling `build(tmp_dir)` to create it first if it is missing.

    `build` writes into a fresh temporary folder that is renamed into place only when it returns, so a
    failed or killed build leaves nothing behind that looks complete.
    """
    final = Path(root) / kind / key
    if (final / DONE_MARKER).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel jobs wait for one builder instead of all building
        if (final / DONE_MARKER).exists():
            return final
        return _build_into(final, key, build)


def _build_into(final: Path, key: str, build: Callable[[Path], None]) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        build(tmp)
        (tmp / DONE_MARKER).write_text(key)
        if final.exists():  # an incomplete leftover from a crash, or a concurrent builder won
            if (final / DONE_MARKER).exists():
                shutil.rmtree(tmp)
                return final
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
