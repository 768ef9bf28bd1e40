"""Checkpoint files that are written whole and read back only when they are what was written.

Lightning's own writer stages a checkpoint in `$TMPDIR` and moves it across filesystems (a full small
`$TMPDIR` or a kill mid-move leaves a partial file under its final name), and its reader unpickles the
file (`torch.load(weights_only=False)`): a crafted `.ckpt` handed to a resume runs its code.
`SafeCheckpointIO` (the Trainer's checkpoint plugin for single-file checkpoints, set by
prefopt.train.trainer_factory) instead:

- writes `NAME.ckpt` to a temporary file in the checkpoint's own folder, hashing the bytes as they are
  written, fsyncs it and renames it into place; then writes `NAME.ckpt.sum` (JSON: hash name, digest,
  bytes) the same way. A checkpoint whose `.sum` is missing was cut short (or written by an older prefopt);
- loads with `weights_only=True` always (tensors and plain containers, never code), and only after the
  file matched its `.sum`: a damaged file is a one-line `ResumeMismatch`, never a silent resume.

`verify(path)` is what resume (prefopt.train.resume) asks before picking a checkpoint, so a damaged
newest checkpoint is skipped for the previous good one. Sharded checkpoints (FSDP `sharded`, DeepSpeed:
folders) are written and read by their strategies and are not covered here.
Exercised by `pytest tests/test_ckpt_safety.py`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from prefopt.errors import ResumeMismatch
from prefopt.store.atomic import fsync_path, write_text_atomic
from prefopt.store.cache import HASH_NAME, file_digest, new_hash

SUM_SUFFIX = ".sum"
UNVERIFIED = "unverified"  # verify()'s answer for a checkpoint with no .sum (an older prefopt wrote it)


def sum_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + SUM_SUFFIX)


class _HashingWriter:
    """A file object for torch.save that hashes and counts the bytes on their way to disk."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.digest, self.size = fh, new_hash(), 0

    def write(self, data: Any) -> int:
        self.digest.update(data)
        self.size += len(memoryview(data))
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def _write_temp(path: Path, write: Callable[[Any], Any]) -> tuple[Path, Any]:
    """Call `write(fh)` on a temporary file beside `path` and fsync it: (the temporary path, what `write`
    returned). A failure removes the temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            result = write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, result


def save_verified(checkpoint: dict[str, Any], path: Path) -> None:
    """Write `checkpoint` to `path` atomically, then its `.sum`. A failed write leaves the old pair as it
    was; the old `.sum` is removed just before the rename, so a kill between the rename and the new `.sum`
    leaves a checkpoint that reads as unverified, never one checked against a wrong sum."""

    def write(fh: Any) -> _HashingWriter:
        writer = _HashingWriter(fh)
        torch.save(checkpoint, writer)
        return writer

    tmp, writer = _write_temp(path, write)
    sum_path(path).unlink(missing_ok=True)
    os.replace(tmp, path)
    fsync_path(path.parent)
    record = {"hash": HASH_NAME, "digest": writer.digest.hexdigest(), "bytes": writer.size}
    write_text_atomic(sum_path(path), json.dumps(record))


@functools.lru_cache(maxsize=8)
def _verify(path: Path, mtime_ns: int, size: int, sum_mtime_ns: int) -> Optional[str]:
    """None (matches its sum), UNVERIFIED (no sum), or why the file is not what was written."""
    try:
        record = json.loads(sum_path(path).read_text())
    except FileNotFoundError:
        return UNVERIFIED
    except (OSError, ValueError) as err:
        return f"its checksum file {sum_path(path).name} is unreadable ({type(err).__name__})"
    if not isinstance(record, dict) or record.get("hash") != HASH_NAME:
        return f"its checksum file {sum_path(path).name} is not one this install can check"
    if record.get("bytes") != size:
        return f"it has {size} bytes where {record.get('bytes')} were written (cut short or damaged)"
    if file_digest(path) != record.get("digest"):
        return "its bytes differ from the checksum written with it (damaged since it was saved)"
    return None


def verify(path: str | os.PathLike) -> Optional[str]:
    """Check a checkpoint file against its `.sum` (read once per process per file version)."""
    path = Path(path)
    stat = path.stat()
    try:
        sum_mtime_ns = sum_path(path).stat().st_mtime_ns
    except FileNotFoundError:
        sum_mtime_ns = -1
    return _verify(path, stat.st_mtime_ns, stat.st_size, sum_mtime_ns)


def load_verified(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """torch.load with weights_only=True after the file matched its checksum (ResumeMismatch if not)."""
    problem = verify(path)
    if problem not in (None, UNVERIFIED):
        raise ResumeMismatch(f"cannot resume from {path}: {problem}; delete it, or resume from another "
                             "checkpoint (ckpt_path=last picks the newest good one)")
    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint plugin: atomic, checksummed writes in the checkpoint's own folder; loads
    only verified files, and never unpickles code (weights_only=True, whatever the caller asks)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        save_verified(checkpoint, Path(path))

    def load_checkpoint(self, path: Any, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        if verify(path) == UNVERIFIED:
            from prefopt.log import get_logger

            get_logger().warning(f"warning: {path} has no checksum file (written by an older prefopt, or cut "
                                 "short): loaded unverified, as tensors only")
        return load_verified(path, map_location=map_location)

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        sum_path(Path(path)).unlink(missing_ok=True)
