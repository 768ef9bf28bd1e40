"""Fingerprints and an on-disk artifact cache shared by tasks, models and log-prob caches.

An artifact (a tokenizer, an SFT policy, a pair file, a log-prob table) lives in
`<cache_root>/<kind>/<key>/`, where `key` is a fingerprint of everything the artifact depends on. It is
built into a temporary folder under a per-key lock and renamed into place, so a crash never leaves a
half-written artifact that a later run would trust, and parallel jobs build it once.

Every artifact is verified when used: its `.complete` marker is a manifest of the size and checksum
(xxh3-128, or sha256 without xxhash) of each file, plus the counts the builder claims (e.g. pairs).
A folder whose files no longer match (truncated, zeroed, garbage, deleted) is named and rebuilt under
the lock; in a read-only cache that is a one-line `CacheError`. Each folder is hashed once per process.
Also: folders follow the user's umask (a team can share a cache), temporary folders of killed
builders are removed, and a run waiting on another's build says who holds the lock and gives up after
`paths.lock_timeout_s` (see `configure`). Exercised by every task build (`python src/run.py data=sort`)
and `pytest tests/test_cache_faults.py`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from prefopt.contracts.fingerprints import fingerprint  # noqa: F401 (re-exported: the caches' keys)
from prefopt.errors import CacheError
from prefopt.log import get_logger
from prefopt.store.lockfile import holder, open_lock, try_lock, write_holder

log = get_logger()
DONE_MARKER = ".complete"  # the manifest; its presence alone no longer makes an artifact trusted
MISSING = "missing"
DEFAULT_LOCK_TIMEOUT_S = 4 * 3600.0
_settings: dict[str, float] = {"lock_timeout_s": DEFAULT_LOCK_TIMEOUT_S}
_verified: dict[str, tuple[int, int]] = {}  # folder -> (inode, mtime_ns) of a manifest already checked

try:  # xxh3 is several times faster than sha256; `datasets` depends on xxhash, so it is normally there
    import xxhash

    HASH_NAME, _new_hash = "xxh3_128", xxhash.xxh3_128
except ImportError:  # pragma: no cover - fallback when xxhash is missing
    HASH_NAME, _new_hash = "sha256", hashlib.sha256
new_hash = _new_hash  # a fresh hash object of HASH_NAME (prefopt.train.ckpt_io hashes checkpoints with it)


def configure(lock_timeout_s: float | None = None) -> None:
    """Process-wide settings (the runner passes `paths.lock_timeout_s`; None or <= 0 waits forever)."""
    _settings["lock_timeout_s"] = float(lock_timeout_s) if lock_timeout_s and lock_timeout_s > 0 else float("inf")


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


# ---- manifests: what a folder held when it was built ------------------------------------------
def file_digest(path: Path) -> str:
    """Checksum of one file's bytes (HASH_NAME), read in 8 MiB blocks."""
    digest, buffer = _new_hash(), bytearray(8 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != DONE_MARKER)


def write_manifest(folder: Path, key: str, counts: dict[str, int] | None = None) -> None:
    """Record every file's size and checksum, and the builder's counts, as the folder's marker."""
    files = {str(p.relative_to(folder)): [p.stat().st_size, file_digest(p)] for p in _files(folder)}
    manifest = {"key": key, "hash": HASH_NAME, "files": files, "counts": dict(counts or {})}
    (folder / DONE_MARKER).write_text(json.dumps(manifest, indent=1))


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((Path(folder) / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def artifact_counts(folder: str | os.PathLike) -> dict[str, int]:
    """The counts the builder recorded (e.g. {"pairs.jsonl": 6021}), to compare with what is loaded."""
    return dict((read_manifest(Path(folder)) or {}).get("counts", {}))


def artifact_problem(folder: str | os.PathLike) -> str | None:
    """None if the folder is a complete artifact whose files match its manifest, `MISSING` if it was
    never completed, else one line naming the first file that differs (hashed once per process)."""
    folder = Path(folder)
    marker = folder / DONE_MARKER
    try:
        stat = marker.stat()
    except OSError:
        return MISSING
    if _verified.get(str(folder)) == (stat.st_ino, stat.st_mtime_ns):
        return None
    problem = _compare(folder, read_manifest(folder))
    if problem is None:
        _verified[str(folder)] = (stat.st_ino, stat.st_mtime_ns)
    return problem


def _compare(folder: Path, manifest: dict[str, Any] | None) -> str | None:
    if manifest is None:
        return f"{folder / DONE_MARKER} records no checksums (built by an older prefopt, or damaged)"
    if manifest.get("hash") != HASH_NAME:
        return f"{folder} was checksummed with {manifest.get('hash')}, which this install cannot check"
    for name, (size, digest) in sorted(manifest["files"].items()):
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{path} has {actual} bytes, {size} when it was built"
        if file_digest(path) != digest:
            return f"{path} does not match its checksum (its bytes changed since it was built)"
    return None


# ---- the lock around one key's build -----------------------------------------------------------
@contextmanager
def build_lock(final: Path) -> Iterator[None]:
    """Hold the lock of `final`'s key; while another process holds it, say who and wait up to
    `paths.lock_timeout_s` (then a CacheError). The holder writes its pid, host and start time. The lock
    file is never followed through a symbolic link (prefopt.store.lockfile)."""
    lock_path = final.parent / f".{final.name}.lock"
    with open_lock(lock_path) as fh:
        _acquire(fh, lock_path, f"{final.parent.name}/{final.name}")
        write_holder(fh)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _acquire(fh: Any, lock_path: Path, what: str) -> None:
    timeout = _settings["lock_timeout_s"]
    started, told = time.time(), False
    while not try_lock(fh):
        waited = time.time() - started
        if not told:
            limit = "forever" if timeout == float("inf") else f"up to {timeout:.0f}s (paths.lock_timeout_s)"
            log.warning(f"cache: waiting for {what}, being built by {holder(lock_path)}; waiting {limit}")
            told = True
        if waited >= timeout:
            raise CacheError(f"gave up after {waited:.0f}s waiting for the build of {what} in {lock_path.parent}, "
                             f"held by {holder(lock_path)}; raise paths.lock_timeout_s, or stop that process")
        time.sleep(min(0.5, max(0.01, timeout - waited)))


# ---- building -----------------------------------------------------------------------------------
def _writable(folder: Path) -> bool:
    """Whether files can be created in `folder`, or in its nearest existing ancestor if it is missing."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return os.access(folder, os.W_OK | os.X_OK)


def cached_dir(root: str | os.PathLike, kind: str, key: str,
               build: Callable[[Path], dict[str, int] | None]) -> Path:
    """Return `<root>/<kind>/<key>`, verified, calling `build(tmp_dir)` to (re)create it first if it is
    missing or damaged. `build` may return counts ({name: n}) to record (see `artifact_counts`).

    `build` writes into a fresh temporary folder that is renamed into place only when it returns, so a
    failed or killed build leaves nothing behind that looks complete.
    """
    final = Path(root) / kind / key
    problem = artifact_problem(final)
    if problem is None:
        return final
    if not _writable(final.parent):
        state = "missing" if problem == MISSING else f"damaged ({problem})"
        raise CacheError(f"the cache {root} is read-only and {kind}/{key} is {state}: point paths.cache_dir "
                         "(or PREFOPT_CACHE) at a writable folder, or build it once where the cache is writable")
    if problem != MISSING:
        log.warning(f"cache: {problem}: rebuilding {kind}/{key}")
    final.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(final):  # parallel jobs wait for one builder instead of all building
        problem = artifact_problem(final)
        if problem is None:  # another process built (or rebuilt) it while this one waited
            return final
        remove_stale_builds(final)
        return _build_into(final, key, build)


def remove_stale_builds(final: Path) -> list[Path]:
    """Remove temporary folders of earlier builds of `final`'s key (call with its lock held: no live
    builder of that key can own them) and a damaged `final`; returns what was removed."""
    stale = [p for p in final.parent.glob(f".{final.name}-*") if p.is_dir()]
    if final.exists():
        stale.append(final)
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _build_into(final: Path, key: str, build: Callable[[Path], dict[str, int] | None]) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: a shared cache must follow the umask
        counts = build(tmp)
        write_manifest(tmp, key, counts if isinstance(counts, dict) else None)
        if final.exists():  # an incomplete or damaged leftover
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    marker = (final / DONE_MARKER).stat()  # just checksummed: trusted for the rest of this process
    _verified[str(final)] = (marker.st_ino, marker.st_mtime_ns)
    return final
