"""Small file-like adapters that let bytes flow through zstd and age in bounded memory.

zstandard and pyrage both pull from a reader and push into a writer, one
buffer at a time; these adapters count, hash and report progress along the
way so nothing ever needs the whole artifact in memory.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

CHUNK_SIZE = 1 << 20
PROGRESS_EVERY_S = 30.0


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class IteratorReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (a Python-side producer).

    An exception raised by the iterator is kept in `error`: the Rust side of
    pyrage turns it into a generic I/O error, and the caller re-raises the
    original so the operator sees what actually failed.
    """

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = b""
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            while not self._pending:
                self._pending = next(self._chunks)
        except StopIteration:
            return 0
        except Exception as exc:
            self.error = exc
            raise
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class MeteredReader(io.RawIOBase):
    """Counts what passes, keeps its first bytes for a format check, logs progress."""

    HEAD_SIZE = 64

    def __init__(
        self,
        inner: BinaryIO,
        label: str,
        progress: Callable[[str], None] | None = None,
        watch: Callable[[memoryview], None] | None = None,
    ):
        self._inner = inner
        self._label = label
        self._progress = progress
        self._watch = watch
        self._next_report = time.monotonic() + PROGRESS_EVERY_S
        self.total = 0
        self.head = b""
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            size = self._inner.readinto(buffer)
        except Exception as exc:
            self.error = getattr(self._inner, "error", None) or exc
            raise
        if len(self.head) < self.HEAD_SIZE:
            self.head += bytes(buffer[: min(size, self.HEAD_SIZE - len(self.head))])
        self.total += size
        if self._watch and size:
            self._watch(memoryview(buffer)[:size])  # valid only during the call
        if self._progress and time.monotonic() >= self._next_report:
            self._progress(f"{self._label}: {human_bytes(self.total)} read so far")
            self._next_report = time.monotonic() + PROGRESS_EVERY_S
        return size


def copy_stream(source: BinaryIO, target: BinaryIO) -> None:
    """Copy through one reused buffer: no fresh 1 MiB allocation per chunk."""
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    while size := source.readinto(view):
        target.write(view[:size])


class CountingWriter(io.RawIOBase):
    """Writes through to `inner`, counting bytes; never closes `inner`. A write error (a full
    disk) is kept in `error`."""

    def __init__(self, inner: BinaryIO):
        self._inner = inner
        self._hash = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        try:
            self._inner.write(data)
        except Exception as exc:
            self.error = exc
            raise
        self.size += len(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class HashingReader(io.RawIOBase):
    """Reads from `inner`, hashing and counting the bytes as stored; a read error is kept in
    `error`, as pyrage reports it only as a failure of its own."""

    def __init__(self, inner: BinaryIO):
        self._inner = inner
        self.size = 0
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            data = self._inner.read(len(buffer))
        except Exception as exc:
            self.error = exc
            raise
        size = len(data)
        buffer[:size] = data
        self._hash.update(data)
        self.size += size
        return size

    def drain(self) -> None:
        """Read to the end, so the hash covers every stored byte."""
        while self.read(CHUNK_SIZE):
            pass


class HashingWriter(CountingWriter):
    """A `CountingWriter` that also hashes the bytes as stored (a write error is kept in
    `error`, as pyrage reports it only as a generic failure of its own)."""

    def __init__(self, inner: BinaryIO):
        super().__init__(inner)
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> int:  # type: ignore[override]
        written = super().write(data)
        self._hash.update(data)
        return written

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
