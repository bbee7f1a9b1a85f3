"""Objects as files under a local directory (`BACKUP_ARTIFACTS_DIR`).

A file is put by hard-linking the staged file into place (no copy when
staging is on the same filesystem, as it is by default) or by copying it to
a temporary name and renaming it, and fsynced with its directory, so a
crash leaves either nothing or a whole file. Stored files are read-only: no
tool that opens one by mistake writes into a snapshot. No path below the root is ever
reached through a symbolic link: a link planted in the store cannot turn a
read or a delete towards anything outside it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from backup_pipelines.errors import StoreError
from backup_pipelines.storage import (
    Backend,
    Fetched,
    NotFollowed,
    ObjectExists,
    ToolAccess,
    key_parts,
)
from backup_pipelines.storage.files import (
    disk_full,
    fsync_path,
    make_private,
    newest_change,
    openness,
)

logger = logging.getLogger(__name__)

WRITE_BITS = 0o222
OTHERS_BITS = 0o007
CHUNK_SIZE = 1 << 20
LINK_REFUSED = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP)
"""Why a hard link may fail where a copy works: another filesystem, or one without links."""


class LocalBackend(Backend):
    """A store on local disk under `root`, which is made private (`make_private`: its owner
    alone, or also `group`) before the first write."""

    def __init__(self, root: Path, group: str | None = None):
        self.root = Path(root)
        self.group = group

    def openness(self) -> str | None:
        return openness(self.root, self.group)

    def _make_parent(self, target: Path) -> None:
        make_private(self.root, self.group)
        target.parent.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"the local store {self.root}"

    def location(self, prefix: str) -> str:
        return f"{self._path(prefix)}/"

    def tool_access(self, key: str, *, pruning: bool = False) -> ToolAccess:
        return ToolAccess(str(self._path(key)))

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key_parts(key))

    def _unlinked(self, key: str, *, itself: bool = True) -> Path:
        """The path of `key`, refusing a symbolic link anywhere between the root and it
        (the last part too, unless `itself` is false: unlinking a link follows nothing)."""
        path = self._path(key)
        for parent in (path, *path.parents) if itself else path.parents:
            if parent == self.root:
                break
            if parent.is_symlink():
                raise NotFollowed(f"{parent} is a symbolic link; the store never follows one")
        return path

    def _failure(self, action: str, path: Path, exc: OSError) -> Exception:
        return disk_full(exc, path) or StoreError(f"cannot {action} {path}: {exc.strerror or exc}")

    def put_file(self, key: str, path: Path, progress: Callable[[int], None] | None = None) -> None:
        """A hard link where the staging area shares the disk (instant), else a copy."""
        target = self._unlinked(key)
        try:
            self._make_parent(target)
            try:
                os.link(path, target)
            except OSError as exc:
                if exc.errno not in LINK_REFUSED:
                    raise
                partial = target.with_name(f".{target.name}.partial")
                shutil.copyfile(path, partial)
                os.rename(partial, target)
            _read_only(target)
            fsync_path(target)
            fsync_path(target.parent)
        except OSError as exc:
            raise self._failure("write", target, exc) from None

    def put_bytes(self, key: str, data: bytes, *, replace: bool = False) -> None:
        if replace:
            self.put_stream(key, io.BytesIO(data), len(data))
            return
        target = self._unlinked(key)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            self._make_parent(target)
            with partial.open("wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            _read_only(partial)
            os.link(partial, target)  # fails where a file is: never over one
            fsync_path(target.parent)
        except FileExistsError:
            raise ObjectExists(f"{target} exists already: left as it was") from None
        except OSError as exc:
            raise self._failure("write", target, exc) from None
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()

    def put_stream(self, key: str, stream: BinaryIO, size: int | None = None) -> None:
        target = self._unlinked(key)
        partial = target.with_name(f".{target.name}.partial")
        try:
            self._make_parent(target)
            with partial.open("wb") as out:
                shutil.copyfileobj(stream, out, CHUNK_SIZE)
                out.flush()
                os.fsync(out.fileno())
            _read_only(partial)
            os.rename(partial, target)
            fsync_path(target.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):  # its folder may be what failed
                partial.unlink()
            raise self._failure("write", target, exc) from None

    def get(self, key: str, limit: int, *, replaced: bool = False) -> Fetched | None:
        path = self._unlinked(key)
        try:
            with _open_no_follow(path) as stream:
                data = stream.read(limit)
                written = os.fstat(stream.fileno()).st_mtime
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NotFollowed(
                    f"{path} is a symbolic link; the store never follows one"
                ) from None
            raise self._failure("read", path, exc) from None
        return Fetched(data, datetime.fromtimestamp(written, UTC))

    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        path = self._unlinked(key)
        try:
            stream = _open_no_follow(path)
        except OSError as exc:
            raise self._failure("read", path, exc) from None
        with stream:
            yield stream

    def _entries(self, prefix: str) -> list[os.DirEntry]:
        directory = self._unlinked(prefix)
        try:
            return list(os.scandir(directory))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._failure("list", directory, exc) from None

    def children(self, prefix: str) -> list[str]:
        names = []
        for entry in self._entries(prefix):
            if entry.is_symlink():
                logger.warning("ignoring %s: a symbolic link", entry.path)
            elif entry.is_dir(follow_symlinks=False):
                names.append(entry.name)
        return names

    def files(self, prefix: str) -> list[str]:
        entries = self._entries(prefix)
        return sorted(entry.name for entry in entries if entry.is_file(follow_symlinks=False))

    def usage(self, prefix: str) -> int:
        directory = self._unlinked(prefix)
        total = 0
        for folder, _, names in os.walk(directory):  # never follows a symbolic link
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    total += os.lstat(os.path.join(folder, name)).st_size
        return total

    def last_change(self, prefix: str) -> datetime | None:
        path = self._unlinked(prefix)
        try:
            return newest_change(path)
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        path = self._unlinked(key, itself=False)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._failure("delete", path, exc) from None

    def delete_prefix(self, prefix: str) -> None:
        directory = self._unlinked(prefix)
        try:
            shutil.rmtree(directory)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._failure("delete", directory, exc) from None


def _read_only(path: Path) -> None:
    """What is stored never changes, and no other local user reads it."""
    os.chmod(path, os.stat(path).st_mode & ~WRITE_BITS & ~OTHERS_BITS & 0o7777)


def _open_no_follow(path: Path) -> BinaryIO:
    """Open a file for reading unless it is a symbolic link."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
