"""Round-trips a large generated stream through a store in a fresh process and reports peak RSS.

Run as a child process by the tests so the measured peak belongs to this
round trip alone (a test process's own peak only ever grows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

from backup_pipelines.snapshot.reader import restore_artifact
from backup_pipelines.snapshot.staging import stage
from backup_pipelines.snapshot.store import SnapshotStore
from backup_pipelines.storage.local import LocalBackend
from backup_pipelines.storage.s3 import S3Backend
from backup_pipelines.storage.streams import CountingWriter

MIB = 1 << 20


def generated_chunks(size_mb: int, seed: int = 7) -> Iterator[bytes]:
    """Half random, half repetitive: compressible like a real dump, never trivially so."""
    rng = random.Random(seed)
    text = b"INSERT INTO contacts VALUES (42, 'Ada Lovelace', 'ada@example.org');\n" * 8000
    for _ in range(size_mb):
        yield rng.randbytes(MIB // 2) + text[: MIB // 2]


class _HashSink:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return len(data)


def peak_rss_mb() -> float:
    """This process's own high-water RSS (VmHWM).

    `ru_maxrss` would also count the memory of the parent it was forked from,
    before exec, and a pytest process is large.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--size-mb", type=int, required=True)
    parser.add_argument("--s3-endpoint")
    parser.add_argument("--s3-bucket")
    parser.add_argument("--s3-keys", nargs=2)
    args = parser.parse_args()

    if args.s3_endpoint:
        backend = S3Backend(
            bucket=args.s3_bucket,
            access_key=args.s3_keys[0],
            secret_key=args.s3_keys[1],
            endpoint_url=args.s3_endpoint,
        )
    else:
        backend = LocalBackend(args.root)
    store = SnapshotStore(backend)
    expected = hashlib.sha256()
    for chunk in generated_chunks(args.size_mb):
        expected.update(chunk)

    with stage(args.root / ".staging", "postgres", "0123abcd-run") as staged:
        staged.add_stream("big.bin", generated_chunks(args.size_mb))
    stored = store.commit(staged)
    staged.discard()
    sink = _HashSink()
    plain_bytes = restore_artifact(store, stored, "big.bin", CountingWriter(sink))
    print(
        json.dumps(
            {
                "plain_bytes": plain_bytes,
                "stored_bytes": stored.manifest.size_bytes,
                "expected_sha256": expected.hexdigest(),
                "restored_sha256": sink.hash.hexdigest(),
                "peak_rss_mb": peak_rss_mb(),
                "location": stored.location,
            }
        )
    )


if __name__ == "__main__":
    main()
