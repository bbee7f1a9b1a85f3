"""Small file-like adapters that let bytes flow through zstd and age in bounded memory.

zstandard and pyrage both pull from a reader and push into a writer, one
buffer at a time; these adapters count, hash and report progress along the
way so nothing ever needs the whole artifact in memory.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

CHUNK_SIZE = 1 << 20
PROGRESS_EVERY_S = 10.0


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def human_span(seconds: float) -> str:
    """A duration as a person reads it: seconds under a minute, then minutes, hours, days."""
    if seconds < 60:
        return f"{max(0.0, seconds):.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes = int(seconds) // 60
    if minutes < 120:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // 1440} d"


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


class ProgressMeter:
    """Says how far long work has come, at most every `PROGRESS_EVERY_S`: the bytes done,
    the rate, and the share of `expected` when the whole is known (a database's size, an
    artifact's). Safe to advance from several threads (boto3's upload callbacks)."""

    def __init__(
        self,
        label: str,
        report: Callable[[str], None] | None,
        expected: int | None = None,
        *,
        verb: str = "read",
    ):
        self._label = label
        self._report = report
        self._expected = expected
        self._verb = verb
        self._started = time.monotonic()
        self._next_report = self._started + PROGRESS_EVERY_S
        self._lock = threading.Lock()
        self.done = 0

    def advance(self, count: int) -> None:
        with self._lock:
            self.done += count
            now = time.monotonic()
            if self._report is None or now < self._next_report:
                return
            self._next_report = now + PROGRESS_EVERY_S
        self._report(self.describe(now))

    def describe(self, now: float) -> str:
        rate = self.done / max(now - self._started, 1e-6)
        share = ""
        if self._expected:
            percent = 100 * self.done / self._expected
            share = f" of {human_bytes(self._expected)} ({percent:.0f}%)"
        return f"{self._label}: {human_bytes(self.done)}{share} {self._verb}, {human_bytes(rate)}/s"


class MeteredReader(io.RawIOBase):
    """Counts what passes, keeps its first bytes for a format check, logs progress."""

    HEAD_SIZE = 64

    def __init__(
        self,
        inner: BinaryIO,
        label: str,
        progress: Callable[[str], None] | None = None,
        watch: Callable[[memoryview], None] | None = None,
        expected: int | None = None,
    ):
        self._inner = inner
        self._watch = watch
        self._meter = ProgressMeter(label, progress, expected)
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
        self._meter.advance(size)
        return size


class EnoughRead(Exception):
    """What a destination raises once it has all it wants (a `pg_restore` that restored its
    share and stopped reading): the stored bytes are still read to their end and checked
    against the manifest, but no longer decoded."""


class PipeFeed(io.RawIOBase):
    """Writes a plain stream into a tool's stdin. When the tool stops reading (it has what
    it wanted, or failed): `EnoughRead` when the stream must still be checked to its end and
    the tool did not fail, else the `BrokenPipeError` itself, which ends it at once (a failed
    tool says why itself; reading the rest of a large artifact would only delay that)."""

    def __init__(
        self, stdin: BinaryIO, *, checks_all: bool, process: subprocess.Popen | None = None
    ):
        self._stdin = stdin
        self._checks_all = checks_all
        self._process = process

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        try:
            self._stdin.write(data)
        except BrokenPipeError:
            if self._checks_all and self._tool_succeeded():
                raise EnoughRead from None
            raise
        return len(data)

    def _tool_succeeded(self) -> bool:
        """Whether the tool that stopped reading did not fail (a bare pipe's reader: yes)."""
        if self._process is None:
            return True
        try:
            return self._process.wait(timeout=10) == 0
        except subprocess.TimeoutExpired:
            return True  # still at work: it only needs no more of the stream


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


class CountingReader(io.RawIOBase):
    """Reads from `inner`, counting the bytes; a read error is kept in `error`, as pyrage
    reports it only as a failure of its own."""

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
        self._passed(data)
        self.size += size
        return size

    def _passed(self, data: bytes) -> None:
        """What a subclass does with each chunk."""

    def drain(self) -> None:
        """Read to the end, so the count (and a subclass's hash) covers every byte."""
        while self.read(CHUNK_SIZE):
            pass


class HashingReader(CountingReader):
    """A `CountingReader` that also hashes the bytes as stored."""

    def __init__(self, inner: BinaryIO):
        super().__init__(inner)
        self._hash = hashlib.sha256()

    def _passed(self, data: bytes) -> None:
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class SizedReader(io.RawIOBase):
    """A stream whose length is known before it is read: an HTTP client announces it
    (Content-Length) instead of sending chunks, which not every server takes."""

    def __init__(self, inner: BinaryIO, size: int):
        self._inner = inner
        self._size = size
        self._position = 0

    def __len__(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)
