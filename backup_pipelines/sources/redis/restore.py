"""Restoring Redis snapshots into a running server or as files, and proving them loadable.

Into a running server, fastest first:

1. the server replicates the RDB from us (`replication.py`) and loads it as
   at start-up: every type, TTL and function, at the server's own speed;
2. where it may not (REPLICAOF or CONFIG forbidden, it cannot reach this
   machine), a throw-away `redis-server` here loads the RDB and pushes the
   keys with `MIGRATE ... COPY REPLACE KEYS` in large batches, server to
   server with no Python in the way;
3. where the throw-away server cannot reach the target either (TLS, a proxy
   that hides MIGRATE), every key goes through us with DUMP / RESTORE.

MIGRATE and DUMP / RESTORE carry every type, streams with their consumer
groups included, and each key's TTL; functions go with FUNCTION DUMP /
RESTORE, which key copies do not carry. The target must run the same or a
newer Redis than the snapshot's source.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import redis

from backup_pipelines.errors import BackupError, IntegrityError
from backup_pipelines.processes import ToolFailed, running
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.snapshot.staging import logical_name
from backup_pipelines.sources.redis.dump import RDB_ARTIFACT, restored_path
from backup_pipelines.sources.redis.replication import (
    RdbSource,
    ReplicationUnavailable,
    WithoutTrailingMark,
    load_by_replication,
)
from backup_pipelines.sources.redis.server import RedisServer, keyspace, throwaway_server
from backup_pipelines.sources.source import Log
from backup_pipelines.storage.files import disk_full

BATCH = 500
MIGRATE_BATCH = 10_000
MIGRATE_TIMEOUT_MS = 60_000


def check_rdb(reader: SnapshotReader, log: Log | None = None) -> None:
    """`redis-check-rdb`: the RDB parses from end to end (checksum included), read from
    the store through its stdin; every stored byte is checked against the manifest."""
    try:
        with running(["redis-check-rdb", "/dev/stdin"], label="redis-check-rdb", fed=True) as tool:
            reader.feed(RDB_ARTIFACT, tool.stdin, process=tool, progress=log)
            tool.stdout.read()
    except ToolFailed as exc:
        raise IntegrityError(str(exc)) from None


def rdb_source(reader: SnapshotReader, log: Log) -> RdbSource:
    """What writes the snapshot's plain RDB, decoded from the store as it is sent."""

    def send(out: BinaryIO) -> None:
        rdb = WithoutTrailingMark(out)
        reader.restore_artifact(RDB_ARTIFACT, rdb, log)
        rdb.finish()

    return send


def rdb_size(reader: SnapshotReader) -> int:
    """The plain RDB's size as recorded at backup (a manifest's figure: untrusted), else the
    stored size (older snapshots): what the wait for the load is measured by."""
    manifest = reader.snapshot.manifest
    recorded = manifest.stats.get("rdb_bytes")
    if isinstance(recorded, int) and recorded > 0:
        return recorded
    return sum(entry.size for entry in manifest.files)


@contextmanager
def loaded_throwaway(reader: SnapshotReader, log: Log) -> Iterator[RedisServer]:
    """A throw-away redis-server holding the snapshot, loaded by replication from the store."""
    with throwaway_server() as server:
        try:
            load_by_replication(server, rdb_source(reader, log), rdb_size(reader), log)
        except ReplicationUnavailable as exc:
            raise IntegrityError(
                f"a throw-away redis-server could not load the RDB: {exc}"
            ) from None
        yield server


def _holds(target: RedisServer) -> tuple[int, int]:
    """Keys and function libraries `target` holds."""
    client = target.client()
    keys = sum(keyspace(client.info("keyspace")).values())
    return keys, len(client.function_list())


def _batches(items: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _databases(server: RedisServer) -> dict[int, int]:
    """Keys per database number of `server`, databases without keys left out."""
    return {
        int(name[2:]): count for name, count in keyspace(server.client().info("keyspace")).items()
    }


def migrate_keys(source: RedisServer, target: RedisServer, log: Log) -> None:
    """`source` pushes every key to `target` with MIGRATE; `redis.ResponseError` if it cannot."""
    auth = _migrate_auth(target)
    for db, count in _databases(source).items():
        reader = source.client(db)
        for keys in _batches(reader.scan_iter(count=MIGRATE_BATCH), MIGRATE_BATCH):
            reader.execute_command(
                "MIGRATE", target.host, target.port, "", db, MIGRATE_TIMEOUT_MS,
                "COPY", "REPLACE", *auth, "KEYS", *keys,
            )  # fmt: skip
        log(f"db{db}: {count} keys restored (MIGRATE)")


def _migrate_auth(target: RedisServer) -> list[str]:
    if target.password is None:
        return []
    if target.username:
        return ["AUTH2", target.username, target.password]
    return ["AUTH", target.password]


def copy_keys(source: RedisServer, target: RedisServer, log: Log) -> None:
    """Copy every key of every database with its TTL through this process."""
    for db, count in _databases(source).items():
        reader, writer = source.client(db), target.client(db)
        for keys in _batches(reader.scan_iter(count=BATCH), BATCH):
            _copy_batch(reader, writer, keys)
        log(f"db{db}: {count} keys restored (DUMP / RESTORE)")


def _copy_batch(reader: redis.Redis, writer: redis.Redis, keys: Sequence[bytes]) -> None:
    read = reader.pipeline(transaction=False)
    for key in keys:
        read.dump(key)
        read.pttl(key)
    replies = read.execute()
    write = writer.pipeline(transaction=False)
    for key, payload, ttl in zip(keys, replies[::2], replies[1::2], strict=True):
        if payload is None or ttl == -2:  # expired in the throw-away server meanwhile
            continue
        write.restore(key, max(ttl, 0), payload, replace=True)
    write.execute()


def restore_into_server(
    reader: SnapshotReader, target: RedisServer, *, force: bool, log: Log
) -> str:
    """Make `target` hold exactly the snapshot's keys, TTLs and functions."""
    try:
        keys, functions = _holds(target)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BackupError(f"cannot connect to Redis at {target.where}: {exc}") from None
    except redis.AuthenticationError:
        raise BackupError(f"Redis at {target.where} refused the credentials in the URL") from None
    if (keys or functions) and not force:
        raise BackupError(
            f"Redis at {target.where} already holds {keys} keys and {functions} function "
            "libraries; add --force to replace them with the snapshot's"
        )
    _refuse_an_older_server(reader.snapshot.manifest.stats.get("redis_version", ""), target)
    check_rdb(reader, log)  # a replica that cannot load what its master sent aborts
    try:
        load_by_replication(target, rdb_source(reader, log), rdb_size(reader), log)
    except ReplicationUnavailable as exc:
        log(f"{exc}; copying the keys from a throw-away server instead")
        _copy_from_throwaway(reader, target, log)
    keys, functions = _holds(target)
    return (
        f"restored {reader.where} into {target.where}: {keys} keys, {functions} function libraries"
    )


def _refuse_an_older_server(snapshot_version: str, target: RedisServer) -> None:
    """Older servers reject newer RDB and DUMP formats; say so before touching anything."""
    target_version = str(target.client().info("server").get("redis_version", ""))
    if _version(target_version) < _version(snapshot_version):
        raise BackupError(
            f"the snapshot comes from Redis {snapshot_version} and Redis at {target.where} is "
            f"{target_version}, which cannot load it: restore into Redis {snapshot_version} "
            "or newer"
        )


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _copy_from_throwaway(reader: SnapshotReader, target: RedisServer, log: Log) -> None:
    """Keys by MIGRATE, or DUMP / RESTORE where MIGRATE cannot reach; then the functions. The
    target is never emptied first: each key is replaced in place, and only once all of the
    snapshot's are in do the keys and libraries it lacks go, so a target that fails or dies
    midway keeps what it held (with the keys copied so far)."""
    with loaded_throwaway(reader, log) as source:
        try:
            try:
                migrate_keys(source, target, log)
            except redis.ResponseError as exc:
                log(f"MIGRATE cannot reach {target.where} ({exc}); copying key by key")
                copy_keys(source, target, log)
            target.client().function_restore(source.client().function_dump(), "REPLACE")
        except redis.ResponseError as exc:
            raise BackupError(
                f"Redis at {target.where} refused the snapshot's keys ({_server_said(exc)}); "
                "it keeps the keys it held, beside those copied before"
            ) from None
        _remove_what_the_snapshot_lacks(source, target, log)


def _server_said(exc: redis.ResponseError) -> str:
    """The server's own words: a pipeline's error also quotes the command, keys and values
    (data) included, which must not reach a log."""
    return str(exc).rsplit("caused error: ", 1)[-1][:200]


def _libraries(server: RedisServer) -> set[str]:
    """The names of the function libraries `server` holds (FUNCTION LIST answers each as a
    flat list of field names and values)."""
    names = set()
    for entry in server.client().function_list():
        fields = dict(zip(entry[::2], entry[1::2], strict=True))
        name = fields.get("library_name", fields.get(b"library_name"))
        names.add(name.decode() if isinstance(name, bytes) else str(name))
    return names


def _remove_what_the_snapshot_lacks(source: RedisServer, target: RedisServer, log: Log) -> None:
    """The target's keys (in every database) and function libraries the snapshot does not
    hold, deleted: the target ends holding exactly the snapshot."""
    removed = 0
    for db in _databases(target):
        reader, writer = source.client(db), target.client(db)
        for keys in _batches(writer.scan_iter(count=BATCH), BATCH):
            check = reader.pipeline(transaction=False)
            for key in keys:
                check.exists(key)
            gone = [key for key, held in zip(keys, check.execute(), strict=True) if not held]
            if gone:
                removed += writer.delete(*gone)
    for library in _libraries(target) - _libraries(source):
        target.client().function_delete(library)
    if removed:
        log(f"{removed} keys the snapshot does not hold removed from {target.where}")


def write_output_dir(reader: SnapshotReader, output_dir: Path, *, force: bool) -> str:
    """Write the RDB (and AOF files) where a stopped redis-server will load them.

    The RDB must pass redis-check-rdb first; every file is then fetched,
    checked, decrypted and decompressed into a scratch directory inside
    `output_dir` (where the plain files are wanted), and only then do they
    replace what was there, so a damaged snapshot or a wrong identity
    leaves the directory as it was.
    """
    if output_dir.exists() and any(output_dir.iterdir()) and not force:
        raise BackupError(f"{output_dir} is not empty; add --force to write into it anyway")
    check_rdb(reader)
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
        check_rdb(reader)
    except BackupError as exc:
        return [str(exc)]
    return []


def restore_drill(reader: SnapshotReader, log: Log) -> dict[str, Any]:
    """redis-check-rdb, then load into a throw-away server and count keys per database."""
    check_rdb(reader, log)
    with loaded_throwaway(reader, log) as loaded:
        restored = keyspace(loaded.client().info("keyspace"))
        libraries = len(loaded.client().function_list())
    expected = reader.snapshot.manifest.stats.get("keys", {})
    return {
        "expected_keys": expected,
        "loaded_keys": restored,
        "function_libraries": libraries,
    }
