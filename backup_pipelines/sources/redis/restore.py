"""Restoring Redis snapshots into a running server or as files, and proving them loadable.

Into a running server, the RDB is first loaded by a throw-away `redis-server`
on this machine, and every key is then copied with DUMP / RESTORE (which
carry every type, streams with their consumer groups included, and each
key's TTL) and the functions with FUNCTION DUMP / RESTORE (DUMP does not
carry them). Replicating from the throw-away server (REPLICAOF) would also
copy everything, but it needs the target to reach this machine over the
network and REPLICAOF to be allowed, which managed servers often forbid;
DUMP / RESTORE needs only an ordinary client connection. The target must
run the same or a newer Redis than the snapshot's source.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import redis

from backup_pipelines.errors import BackupError, IntegrityError
from backup_pipelines.processes import ToolFailed, run_tool
from backup_pipelines.snapshot.files import disk_full
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.snapshot.staging import logical_name
from backup_pipelines.sources.redis.dump import RDB_ARTIFACT, restored_path
from backup_pipelines.sources.redis.server import RedisServer, keyspace, throwaway_server
from backup_pipelines.sources.source import Log

BATCH = 500


def check_rdb(path: Path) -> None:
    """`redis-check-rdb`: the RDB parses from end to end (checksum included)."""
    try:
        run_tool(["redis-check-rdb", str(path)], label="redis-check-rdb")
    except ToolFailed as exc:
        raise IntegrityError(str(exc)) from None


def _is_empty(target: RedisServer) -> tuple[int, int]:
    client = target.client()
    keys = sum(keyspace(client.info("keyspace")).values())
    return keys, len(client.function_list())


def _batches(items: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def copy_keys(source: RedisServer, target: RedisServer, log: Log) -> int:
    """Copy every key of every database with its TTL; return how many were copied."""
    copied = 0
    for name, count in keyspace(source.client().info("keyspace")).items():
        db = int(name[2:])
        reader, writer = source.client(db), target.client(db)
        for keys in _batches(reader.scan_iter(count=BATCH), BATCH):
            copied += _copy_batch(reader, writer, keys)
        log(f"db{db}: {count} keys restored")
    return copied


def _copy_batch(reader: redis.Redis, writer: redis.Redis, keys: Sequence[bytes]) -> int:
    read = reader.pipeline(transaction=False)
    for key in keys:
        read.dump(key)
        read.pttl(key)
    replies = read.execute()
    write = writer.pipeline(transaction=False)
    written = 0
    for key, payload, ttl in zip(keys, replies[::2], replies[1::2], strict=True):
        if payload is None or ttl == -2:  # expired in the throw-away server meanwhile
            continue
        write.restore(key, max(ttl, 0), payload, replace=True)
        written += 1
    write.execute()
    return written


def restore_into_server(
    reader: SnapshotReader, target: RedisServer, *, force: bool, log: Log
) -> str:
    """Make `target` hold exactly the snapshot's keys, TTLs and functions."""
    try:
        keys, functions = _is_empty(target)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BackupError(f"cannot connect to Redis at {target.where}: {exc}") from None
    except redis.AuthenticationError:
        raise BackupError(f"Redis at {target.where} refused the credentials in the URL") from None
    if (keys or functions) and not force:
        raise BackupError(
            f"Redis at {target.where} already holds {keys} keys and {functions} function "
            "libraries; add --force to replace them with the snapshot's"
        )
    with reader.artifact_file(RDB_ARTIFACT) as rdb, throwaway_server(rdb.parent) as source:
        writer = target.client()
        if keys or functions:
            log(f"emptying Redis at {target.where} (--force)")
            writer.flushall()
            writer.function_flush()
        copied = copy_keys(source, target, log)
        writer.function_restore(source.client().function_dump(), "REPLACE")
        libraries = len(source.client().function_list())
    return (
        f"restored {reader.where} into {target.where}: "
        f"{copied} keys, {libraries} function libraries"
    )


def write_output_dir(reader: SnapshotReader, output_dir: Path, *, force: bool) -> str:
    """Write the RDB (and AOF files) where a stopped redis-server will load them.

    Every file is fetched, checked, decrypted and decompressed into a scratch
    directory inside `output_dir`, and the RDB must pass redis-check-rdb;
    only then do the files replace what was there, so a damaged snapshot or
    a wrong identity leaves the directory as it was.
    """
    if output_dir.exists() and any(output_dir.iterdir()) and not force:
        raise BackupError(f"{output_dir} is not empty; add --force to write into it anyway")
    files = reader.snapshot.manifest.files
    names = [logical_name(entry.name) for entry in files]
    placed = {name: restored_path(name) for name in names}
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=output_dir, prefix=".restore-") as scratch:
            for name, relative in placed.items():
                path = Path(scratch, relative)
                path.parent.mkdir(exist_ok=True)
                with path.open("xb") as out:
                    reader.restore_artifact(name, out)
            check_rdb(Path(scratch, RDB_ARTIFACT))
            for top in sorted({relative.parts[0] for relative in placed.values()}):
                _replace(Path(scratch, top), output_dir / top, Path(scratch))
    except OSError as exc:
        raise disk_full(exc, output_dir, hint="free space there") or exc from None
    return f"wrote {reader.where} to {output_dir} ({len(files)} files)"


def _replace(new: Path, old: Path, scratch: Path) -> None:
    """Put `new` where `old` is; an old directory goes into `scratch`, removed with it."""
    if old.is_dir() and not old.is_symlink():
        old.rename(scratch / f".replaced-{old.name}")
    os.replace(new, old)


def deep_verify_rdb(reader: SnapshotReader) -> list[str]:
    try:
        with reader.artifact_file(RDB_ARTIFACT) as rdb:
            check_rdb(rdb)
    except BackupError as exc:
        return [str(exc)]
    return []


def restore_drill(reader: SnapshotReader) -> dict[str, Any]:
    """redis-check-rdb, then load into a throw-away server and count keys per database."""
    with reader.artifact_file(RDB_ARTIFACT) as rdb:
        check_rdb(rdb)
        with throwaway_server(rdb.parent) as loaded:
            restored = keyspace(loaded.client().info("keyspace"))
            libraries = len(loaded.client().function_list())
    expected = reader.snapshot.manifest.stats.get("keys", {})
    return {
        "expected_keys": expected,
        "loaded_keys": restored,
        "function_libraries": libraries,
    }
