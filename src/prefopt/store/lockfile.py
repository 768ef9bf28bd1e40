"""Lock files that cannot be turned against their owner: opened without following links, holder named.

A lock file lives in a folder others can write to (a team's shared cache, a run folder). Opening it
with a plain `open(path, "a+")` follows a symbolic link planted in its place, and the holder's note
then truncates and overwrites whatever the link points at. `open_lock` creates a new lock with
`O_CREAT | O_EXCL` and opens an existing one with `O_NOFOLLOW`, and refuses anything but a regular
file (one-line `CacheError`). `try_lock` takes the `flock` without waiting; `write_holder` / `holder`
record and read who holds it (pid, host, since). Used by prefopt.store.cache (build locks) and
prefopt.run.folder (the run-folder lock). Exercised by `pytest tests/test_ckpt_safety.py tests/test_cache_faults.py`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import IO

from prefopt.errors import CacheError

_FLAGS = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _open_fd(path: Path) -> int:
    try:
        return os.open(path, _FLAGS | os.O_CREAT | os.O_EXCL, 0o666)  # a new lock: never through a link
    except FileExistsError:
        return os.open(path, _FLAGS)  # an existing one: O_NOFOLLOW refuses a symbolic link (ELOOP)


def open_lock(path: Path) -> IO[str]:
    """The lock file at `path`, opened read-write without following a symbolic link; a link or anything
    other than a regular file there is a one-line CacheError naming it."""
    try:
        fd = _open_fd(path)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK):
            raise CacheError(f"{path} is a symbolic link where a lock file belongs; prefopt does not follow "
                             "it (it could overwrite the file it points at): remove it and run again") from None
        raise CacheError(f"cannot open the lock file {path}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CacheError(f"{path} is not a regular file where a lock file belongs: remove it and run again")
    return os.fdopen(fd, "r+")


def try_lock(fh: IO[str]) -> bool:
    """Take the exclusive lock without waiting; False when another process holds it."""
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def write_holder(fh: IO[str]) -> None:
    """Record this process as the holder (pid, host, start time) in the lock file it holds."""
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
    fh.flush()


def holder(path: Path) -> str:
    """Who holds a lock, from what the holder wrote into the lock file (read without following links)."""
    try:
        with open_lock(path) as fh:
            info = json.loads(fh.read() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info["since"]))
        return f"pid {info['pid']} on {info['host']} since {since} ({time.time() - info['since']:.0f}s ago)"
    except (OSError, ValueError, KeyError, TypeError, CacheError):
        return "another process (it has not said which)"
