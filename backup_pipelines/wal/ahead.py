"""WAL pushed ahead of PostgreSQL's asking, and the fast answer when it asks.

PostgreSQL's archiver runs `archive_command` once per segment, one after
another, so a backlog drains no faster than one process start (about 0.35 s
of imports) plus one segment's work at a time. As pgBackRest's
`archive-async` does, `wal-push` therefore also pushes the other segments
waiting in `archive_status/` (`.ready`), several at once, and leaves a
marker for each in a spool directory once the archive's listing shows it
stored, with its sha256 and the identity of the file pushed (inode, size,
modification time). When PostgreSQL later asks for one of them, the command
answers before importing anything else: the marker is there, young, and
names the very file PostgreSQL hands over (PostgreSQL never changes a
segment once it is ready; a recycled one is a new name), so it exits 0 at
once; otherwise the full push runs, as before.

This module is imported on that fast path: the standard library only. The
spool directory belongs to the OS user PostgreSQL runs as (mode 0700,
refused if it is anyone else's or a link) and is keyed by the store's
settings and the target, so a marker of one archive never answers for another.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

MARKER_MAX_AGE_S = 600
"""A marker older than this is not trusted (the store may have been replaced meanwhile):
the push runs again, and finds the file stored."""
STORE_VARIABLES = (
    "BACKUP_S3_ENDPOINT_URL",
    "BACKUP_S3_BUCKET",
    "BACKUP_S3_PREFIX",
    "BACKUP_ARTIFACTS_DIR",
)
SEGMENT_FILE = re.compile(r"[0-9A-F]{24}")


def spool_dir(target: str | None) -> Path | None:
    """This store's and target's spool directory, made if missing; None when it cannot be
    ours alone (another user's, a link), and nothing is then pushed ahead or answered."""
    key = "\0".join([*(os.environ.get(name, "") for name in STORE_VARIABLES), target or ""])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"backup-pipelines-wal-ahead-{os.getuid()}-{digest}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        found = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        return None
    return path


def identity(path: Path) -> str:
    """What tells one file from another at a name: inode, size, modification time."""
    found = os.stat(path)
    return f"{found.st_ino} {found.st_size} {found.st_mtime_ns}"


def mark_stored(spool: Path, path: Path, file_identity: str, sha256: str) -> None:
    """Say that the segment at `path`, the file `file_identity` names (taken before it was
    read for the push), is in the archive with content `sha256`."""
    write_whole(spool / path.name, f"{file_identity}\n{sha256}\n")


def write_whole(path: Path, text: str) -> None:
    """`text` at `path`, whole or not at all: a temporary name beside it, then a rename."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)


def pushed_ahead(arguments: Sequence[str]) -> bool:
    """Whether `wal-push ARGUMENTS` can answer 0 at once: its segment was pushed ahead, and
    the file at its path is the very one pushed. The marker is used up either way."""
    path, target = push_arguments(arguments)
    if path is None or SEGMENT_FILE.fullmatch(path.name) is None:
        return False
    spool = spool_dir(target)
    if spool is None:
        return False
    marker = spool / path.name
    try:
        young = time.time() - marker.stat().st_mtime < MARKER_MAX_AGE_S
        said = marker.read_text().splitlines()
        marker.unlink()
        return young and said[:1] == [identity(path)]
    except OSError:
        return False


def push_arguments(arguments: Sequence[str]) -> tuple[Path | None, str | None]:
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
            path = Path(word)
    return path, target


def waiting_after(path: Path, limit: int) -> list[Path]:
    """The segments after `path` that PostgreSQL has ready to archive (`.ready` in its
    `archive_status/`), oldest first, at most `limit`."""
    status = path.parent / "archive_status"
    try:
        names = [entry.name.removesuffix(".ready") for entry in os.scandir(status)]
    except OSError:
        return []
    later = sorted(n for n in names if SEGMENT_FILE.fullmatch(n) and n > path.name)
    return [path.parent / name for name in later[:limit]]
