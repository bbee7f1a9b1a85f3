"""An object from one store to another, byte for byte, and the proof that it arrived.

A copy counts only once its bytes were read back from where they went and
match: what the manifest says for a snapshot's artifacts (`sha256`), or
what passed through this process for anything else. Large objects between
two buckets of one S3 service are copied by the service itself; everything
else is streamed a chunk at a time, never whole in memory or on disk.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from backup_pipelines.errors import IntegrityError
from backup_pipelines.storage import Backend
from backup_pipelines.storage.streams import CHUNK_SIZE, HashingReader, MeteredReader

Log = Callable[[str], None] | None


@dataclass(frozen=True)
class Bytes:
    """How many bytes an object holds, and their sha256."""

    size: int
    sha256: str


def read_back(backend: Backend, key: str) -> Bytes:
    """The stored object `key`, read whole (a chunk at a time) and hashed."""
    with backend.open(key) as stored:
        reader = HashingReader(stored)
        reader.drain()
    return Bytes(reader.size, reader.hexdigest())


def send(
    source: Backend, target: Backend, key: str, size: int | None = None, progress: Log = None
) -> Bytes | None:
    """`key` of `source` into `target`: by the service itself when it can (None: nothing
    passed here), else streamed (what passed), `progress` hearing how far it came. Not yet
    proven: see `copy_proven`."""
    if size is not None and target.copy_from(source, key, size):
        return None
    with source.open(key) as stream:
        reader = HashingReader(MeteredReader(stream, f"copying {key}", progress, expected=size))
        # whole chunks, as a multipart upload needs parts of its chosen size
        target.put_stream(key, io.BufferedReader(reader, CHUNK_SIZE), size)
        reader.drain()  # what the upload left unread (none): the proof then fails
    return Bytes(reader.size, reader.hexdigest())


def copy_proven(
    source: Backend,
    target: Backend,
    key: str,
    expected: Bytes | None = None,
    progress: Log = None,
) -> Bytes:
    """`key` copied and read back from `target`; `IntegrityError` unless what is there is
    `expected` (a manifest's figures) or, without it, the bytes `source` gave."""
    passed = send(source, target, key, expected.size if expected else None, progress)
    want = expected or passed or read_back(source, key)
    landed = read_back(target, key)
    if landed != want:
        raise IntegrityError(
            f"{key}: the copy in {target.describe()} holds {landed.size} bytes that are not "
            f"the {want.size} of {source.describe()}"
        )
    return landed
