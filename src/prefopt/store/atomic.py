"""Writing a run's files whole: a reader (or a resume after a kill, a full disk, a SIGTERM) finds either the
old file or folder or the complete new one under the final name, never a part.

- `write_text_atomic(path, text)`: a temp file beside `path`, fsynced, renamed over it, the folder fsynced;
  on a failure the temp file is removed and the error raised (results.json, train_metrics.json,
  generations.json).
- `replace_folder(folder, fill)`: `fill(staging)` writes into `<folder>.tmp-<pid>` beside `folder` (same
  filesystem), every file is fsynced, then the old folder is renamed away, the new one renamed in and the
  old one removed (model/). A failure or a signal in `fill` removes the staging folder and leaves the old
  folder as it was.
Exercised by `pytest tests/test_late_failures.py tests/test_preflight.py`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """`text` into `path` through `<name>.tmp` beside it: written, fsynced, renamed; the temp file never stays."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))


def _remove_leftovers(folder: Path) -> None:
    """Staging folders an earlier, killed attempt left beside `folder`; an old copy is put back when the kill
    fell between the two renames (no `folder`, its old copy beside it)."""
    for old in sorted(folder.parent.glob(f"{folder.name}.old-*")):
        if not folder.exists():
            os.rename(old, folder)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for staging in folder.parent.glob(f"{folder.name}.tmp-*"):
        shutil.rmtree(staging, ignore_errors=True)


def _swap(staging: Path, folder: Path) -> None:
    """The complete `staging` becomes `folder`: the old one renamed away, the new one in, the old one removed."""
    old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.rename(folder, old)
    try:
        os.rename(staging, folder)
    except BaseException:
        if old.exists() and not folder.exists():
            os.rename(old, folder)
        raise
    fsync_path(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def replace_folder(folder: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """`fill(staging)` writes the new folder's files; `folder` then becomes that folder, complete, or stays
    as it was when `fill` (or the fsync) fails."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    try:
        fill(staging)
        _fsync_tree(staging)
        _swap(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
