"""WAL pushed ahead of PostgreSQL's asking, and the fast answer when it asks.

PostgreSQL's archiver runs `archive_command` once per segment, one after
another, so a backlog drains no faster than one process start (about 0.35 s
of imports) plus one segment's work at a time. As pgBackRest's
`archive-async` does, `wal-push` therefore starts a *helper*: a detached
process (`wal-push --ahead`) that pushes the other segments waiting in
`archive_status/` (`.ready`), several at once, while the command stores
its own segment and returns. The helper holds an exclusive lock in the
spool directory (one at a time) and leaves a marker for each segment once
the archive's listing shows it stored, with its sha256 and the identity of
the file pushed (inode, size, modification time).

When PostgreSQL later asks for one of them, the command answers before
importing anything else: the marker is there, young, and names the very
file PostgreSQL hands over (PostgreSQL never changes a segment once it is
ready; a recycled one is a new name), so it exits 0 at once. While the
helper runs and the marker is not there yet, the command waits for it (up
to `MARKER_WAIT_S`); when the helper ends without it, or in any other case,
the full push runs, as before. A helper killed midway leaves markers only
for what the archive holds.

This module is imported on that fast path: a few modules of the standard
library only, and paths as strings (importing `pathlib`, `re` and `tempfile`
would more than double the time such an answer takes). The spool directory
belongs to the OS user PostgreSQL runs as (mode 0700, refused if it is
anyone else's or a link) and is keyed by the store's settings and the
target, so a marker of one archive never answers for another.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import time
from collections.abc import Sequence

from backup_pipelines import locks

MARKER_MAX_AGE_S = 600
"""A marker older than this is not trusted (the store may have been replaced meanwhile):
the push runs again, and finds the file stored."""
STORE_VARIABLES = (
    "BACKUP_S3_ENDPOINT_URL",
    "BACKUP_S3_BUCKET",
    "BACKUP_S3_PREFIX",
    "BACKUP_ARTIFACTS_DIR",
)
HEX_UPPER = frozenset("0123456789ABCDEF")
HELPER_LOCK = "helper.lock"
"""The spool's file the helper holds locked while it runs (its pid inside)."""
MARKER_WAIT_S = 60
"""How long a command waits for the running helper to mark its segment."""
MARKER_POLL_S = 0.005
"""How often it looks for the marker meanwhile (and every 20th time, for the helper)."""
Pathish = str | os.PathLike


def is_segment_name(name: str) -> bool:
    """A WAL segment's name: 24 upper-case hexadecimal digits."""
    return len(name) == 24 and HEX_UPPER.issuperset(name)


def temp_dir() -> str:
    """Where the spool lives, and pushes compress: `$TMPDIR`, else `/tmp`."""
    return os.environ.get("TMPDIR") or "/tmp"


def spool_dir(target: str | None) -> str | None:
    """This store's and target's spool directory, made if missing; None when it cannot be
    ours alone (another user's, a link), and nothing is then pushed ahead or answered."""
    key = "\0".join([*(os.environ.get(name, "") for name in STORE_VARIABLES), target or ""])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = os.path.join(temp_dir(), f"backup-pipelines-wal-ahead-{os.getuid()}-{digest}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        found = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        return None
    return path


def identity(path: Pathish) -> str:
    """What tells one file from another at a name: inode, size, modification time."""
    found = os.stat(path)
    return f"{found.st_ino} {found.st_size} {found.st_mtime_ns}"


def mark_stored(spool: Pathish, path: Pathish, file_identity: str, sha256: str) -> None:
    """Say that the segment at `path`, the file `file_identity` names (taken before it was
    read for the push), is in the archive with content `sha256`."""
    marker = os.path.join(spool, os.path.basename(path))
    write_whole(marker, f"{file_identity}\n{sha256}\n")


def write_whole(path: Pathish, text: str) -> None:
    """`text` at `path`, whole or not at all: a temporary name beside it, then a rename."""
    folder, name = os.path.split(os.fspath(path))
    partial = os.path.join(folder, f".{name}.{os.getpid()}")
    with open(partial, "w") as out:
        out.write(text)
    os.replace(partial, path)


def pushed_ahead(arguments: Sequence[str]) -> bool:
    """Whether `wal-push ARGUMENTS` can answer 0 at once: its segment was pushed ahead (or is
    marked while we wait for the running helper), and the file at its path is the very one
    pushed. The marker is used up either way."""
    path, target = push_arguments(arguments)
    if path is None or not is_segment_name(os.path.basename(path)):
        return False
    spool = spool_dir(target)
    if spool is None:
        return False
    marker = os.path.join(spool, os.path.basename(path))
    _wait_for(marker, spool)
    try:
        young = time.time() - os.stat(marker).st_mtime < MARKER_MAX_AGE_S
        with open(marker) as found:
            said = found.read().splitlines()
        os.unlink(marker)
        return young and said[:1] == [identity(path)]
    except OSError:
        return False


def _wait_for(marker: str, spool: str) -> None:
    """Until `marker` exists, the helper stops running, or `MARKER_WAIT_S` have passed."""
    deadline = time.monotonic() + MARKER_WAIT_S
    polls = 0
    while not os.path.exists(marker) and time.monotonic() < deadline:
        if polls % 20 == 0 and not helper_running(spool):
            return
        polls += 1
        time.sleep(MARKER_POLL_S)


def helper_running(spool: Pathish) -> bool:
    """Whether a helper holds the spool's lock now."""
    return locks.held(os.path.join(spool, HELPER_LOCK))


def claim_helper_lock(spool: Pathish) -> int | None:
    """The helper's exclusive lock, taken by the command that starts it and handed to it as
    an open descriptor (a `flock` belongs to the open file, so the helper holds it from the
    moment it exists); None when a helper already runs."""
    descriptor = os.open(os.path.join(spool, HELPER_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def hold_helper_lock(descriptor: int) -> None:
    """In the helper: the lock handed over is ours until we exit; our pid goes in it."""
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if it is not ours
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)


def push_arguments(arguments: Sequence[str]) -> tuple[str | None, str | None]:
    """`PATH [--target T]` as PostgreSQL's archive_command passes them; (None, None) for
    anything else, which the full command then reads and answers."""
    words, path, target = list(arguments), None, None
    while words:
        word = words.pop(0)
        if word == "--target" and words:
            target = words.pop(0)
        elif word.startswith("--target="):
            target = word.removeprefix("--target=")
        elif word.startswith("-") or path is not None:
            return None, None
        else:
            path = word
    return path, target


def waiting_after(path: Pathish, limit: int) -> list[str]:
    """The segments after `path` that PostgreSQL has ready to archive (`.ready` in its
    `archive_status/`), oldest first, at most `limit`."""
    folder, name = os.path.split(os.fspath(path))
    try:
        names = [
            entry.name.removesuffix(".ready")
            for entry in os.scandir(os.path.join(folder, "archive_status"))
        ]
    except OSError:
        return []
    later = sorted(n for n in names if is_segment_name(n) and n > name)
    return [os.path.join(folder, later_name) for later_name in later[:limit]]
