"""Stores at the level of bytes: the backends (local disk, S3) that move them and nothing else,
where everything lives (`layout.py`), and the checks every name passes before it becomes a
key (`names.py`).

A backend puts, gets, lists and deletes objects by key (`<source>/<id>/<name>`,
relative to its root); it knows nothing of manifests, ordering or what makes
a snapshot complete, which `snapshot/store.py` decides once for every
backend (as restic's backends only save, load, list and remove, with the
write ordering one layer up). Keys come from `layout.py` alone, after every
part was checked; a backend still refuses a key with an empty or `..` part,
so no slip above it can reach outside its root.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from backup_pipelines.errors import StoreError


class ObjectExists(StoreError):
    """A write found an object already at its key, and left it as it was."""


class NotFollowed(StoreError):
    """A path in the local store is a symbolic link: it is never read or written through."""


@dataclass(frozen=True)
class Fetched:
    """A small object read whole (a manifest), with when it was written."""

    data: bytes
    modified: datetime
    locked_until: datetime | None = None
    """Until when S3 Object Lock keeps the object from being deleted (None: not locked)."""
    rewritten: str | None = None
    """Why the object was written over after it was first written (a bucket that keeps
    versions shows it), and the first version was read instead; None when it never was."""


@dataclass(frozen=True)
class ToolAccess:
    """How a tool of the operators' (restic) reaches a key of a store: a path or
    `s3:<endpoint>/<bucket>/<prefix>/<key>`, and for S3 the keys and region to use."""

    location: str
    keys: tuple[str, str, str] | None = None
    """Access key, secret key, region; None for a local store."""


class Backend(ABC):
    """Bytes by key under one root; every method raises `StoreError` (or `StorageFull`)."""

    @abstractmethod
    def describe(self) -> str:
        """The store in a few words, for messages (never with credentials)."""

    @abstractmethod
    def tool_access(self, key: str, *, pruning: bool = False) -> ToolAccess:
        """Where a tool finds `key`, with the prune keys when `pruning` and the store has
        some (restic's prune deletes packs)."""

    @abstractmethod
    def location(self, prefix: str) -> str:
        """Where an operator finds `prefix` (a path or an s3:// URL), ending in `/`."""

    @abstractmethod
    def put_file(self, key: str, path: Path, progress: Callable[[int], None] | None = None) -> None:
        """Store a copy of the local file `path`; durable once this returns. `progress` hears
        the bytes sent as they go (where sending takes time: a network store)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, replace: bool = False) -> None:
        """Store `data` whole and atomically; durable once this returns. Never over an
        object already there (`ObjectExists`: S3's conditional write, a hard link here), so
        a manifest or an audit record, once written, stays as written; `replace` is for the
        records that are replaced by design (a drill's verdict, a copy store's dropped
        list)."""

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, size: int | None = None) -> None:
        """Store the bytes `stream` gives (`size` of them, when known), read a bounded chunk
        at a time (never whole in memory or on disk); durable once this returns."""

    def copy_from(self, other: Backend, key: str, size: int) -> bool:
        """Copy `key` of `other` (`size` bytes) without the bytes passing through this process
        (one S3 service to itself); False when this backend cannot, and it is to be streamed."""
        return False

    def openness(self) -> str | None:
        """Why the store is open to more local users than it should be (a local store's
        root), None when it is not; S3's access is its policies'."""
        return None

    @abstractmethod
    def get(self, key: str, limit: int, *, replaced: bool = False) -> Fetched | None:
        """At most `limit` bytes of a small object, or None when there is none. An object
        written once (`put_bytes` without `replace`) is read as first written; one `replaced`
        by design, as last written."""

    @abstractmethod
    def open(self, key: str) -> AbstractContextManager[BinaryIO]:
        """An object's bytes as a readable stream."""

    @abstractmethod
    def children(self, prefix: str) -> list[str]:
        """The names directly below `prefix` (a `…/` key) that hold anything."""

    @abstractmethod
    def files(self, prefix: str) -> list[str]:
        """The names of the objects directly below `prefix` (a `…/` key)."""

    @abstractmethod
    def usage(self, prefix: str) -> int:
        """The bytes stored below `prefix`, everything included (what the store bills)."""

    @abstractmethod
    def last_change(self, prefix: str) -> datetime | None:
        """When anything below `prefix` was last written (or an upload into it began);
        None when nothing is there."""

    def clock(self) -> datetime:
        """What time the store says it is: the clock its dates (`last_change`) come from.
        On local disk, this host's."""
        return datetime.now(UTC)

    def retained_until(self, prefix: str) -> datetime | None:
        """Until when a lock keeps anything below `prefix` from being deleted; None when
        nothing there is locked (no lock on local disk)."""
        return None

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; nothing happens when there is none."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove everything below `prefix`, unfinished uploads included."""


def key_parts(key: str) -> list[str]:
    """The parts of a key; `ValueError` for one a backend must never act on."""
    parts = key.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"refusing the storage key {key!r}")
    return parts
