"""Whether another process holds a lock file: the one probe behind `wal-push`'s helper lock
(`wal/ahead.py`) and a source's dump lock (`snapshot/staging.py`). The standard library only:
`wal-push`'s fast path imports it."""

from __future__ import annotations

import fcntl
import os


def held(path: str | os.PathLike) -> bool:
    """Whether a process holds an exclusive `flock` on `path` (probed with a shared one,
    released at once); False when there is no such file."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # releases the probe's lock
    return False
