"""Taking a Redis snapshot: the RDB over the replication protocol, plus AOF files when readable.

`redis-cli --rdb -` asks the server for a full sync and writes the RDB it
receives to stdout, so it works on servers that keep nothing on disk
(`save ""`) and needs no access to their file system. The server may wait
`repl-diskless-sync-delay` seconds (5 by default) before it starts sending:
that pause is expected.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

import redis

from backup_pipelines.errors import IntegrityError
from backup_pipelines.processes import ToolFailed
from backup_pipelines.snapshot.staging import WARNING, StagedSnapshot
from backup_pipelines.sources.redis.server import (
    QUESTION_TIMEOUT_S,
    RedisRefused,
    RedisServer,
    keyspace,
)
from backup_pipelines.storage.names import check_artifact_name

RDB_ARTIFACT = "dump.rdb"
AOF_DIR = "appendonlydir"
AOF_PREFIX = f"{AOF_DIR}."
LEGACY_AOF = "appendonly.aof"


def aof_files(data_dir: Path | None, log: Callable[[str], None]) -> list[Path]:
    """Redis 7's `appendonlydir/*` (or a single pre-7 `appendonly.aof`), if the dir is readable."""
    if data_dir is None:
        return []
    try:
        candidates = [*sorted((data_dir / AOF_DIR).glob("*")), data_dir / LEGACY_AOF]
        files = [path for path in candidates if path.is_file()]
        for path in files:
            path.open("rb").close()
    except OSError as exc:
        log(f"BACKUP_REDIS_DATA_DIR {data_dir} is not readable ({exc.strerror}): no AOF files")
        return []
    if not files:
        log(f"no AOF files in BACKUP_REDIS_DATA_DIR {data_dir} (appendonly is off?)")
    return files


def aof_artifact(path: Path) -> str:
    """Artifact names are plain file names, so `appendonlydir/x` is stored as `appendonlydir.x`."""
    return f"{AOF_PREFIX}{path.name}" if path.parent.name == AOF_DIR else path.name


def restored_path(artifact: str) -> PurePosixPath:
    """Where an artifact goes in a Redis data dir: the inverse of `aof_artifact`."""
    try:
        if artifact.startswith(AOF_PREFIX):
            return PurePosixPath(AOF_DIR, check_artifact_name(artifact.removeprefix(AOF_PREFIX)))
        return PurePosixPath(check_artifact_name(artifact))
    except ValueError as exc:
        raise IntegrityError(f"not a file of a Redis data dir: {exc}") from None


def dump_server(
    staged: StagedSnapshot,
    server: RedisServer,
    data_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Stage the RDB (and AOF files); record keys per database, memory and version in stats."""
    patience = min(QUESTION_TIMEOUT_S, staged.stall_after_s)  # as long as a dump may stall
    info = server.info(timeout_s=patience)
    delay = _sync_delay(server, patience)
    if delay:
        log(f"waiting for {server.where} to start the sync (repl-diskless-sync-delay {delay} s)")
    try:
        staged.add_command(
            RDB_ARTIFACT,
            ["redis-cli", *server.cli_args(), "--rdb", "-"],
            label=f"redis-cli --rdb from {server.where}",
            env=server.cli_env(),
            expect_prefix=b"REDIS",
            secrets=server.secrets(),
        )
    except ToolFailed as exc:
        if "NOPERM" in exc.stderr or "unknown command" in exc.stderr:
            raise RedisRefused(
                f"{exc} (the server refused to sync: the user needs the +sync and +psync ACL "
                "permissions, and SYNC must not be renamed or disabled)"
            ) from None
        raise
    for path in aof_files(data_dir, log):
        staged.add_file(aof_artifact(path), path)
    keys = keyspace(info)
    staged.stats.update(
        keys=keys,
        keys_total=sum(keys.values()),
        used_memory=int(info.get("used_memory", 0)),
        redis_version=str(info.get("redis_version", "")),
        rdb_bytes=staged.plain_bytes[staged.files[0].name],
        aof_files=len(staged.files) - 1,
        server=server.where,
    )
    if not keys:
        staged.stats[WARNING] = (
            f"{server.where} holds no keys at all: if it should, BACKUP_REDIS_HOST or "
            "BACKUP_REDIS_PORT names the wrong server"
        )


def _sync_delay(server: RedisServer, timeout_s: float) -> int:
    """The server's repl-diskless-sync-delay, or 0 when CONFIG is not allowed to us."""
    try:
        asked = server.client(timeout_s=timeout_s)
        value = asked.config_get("repl-diskless-sync-delay")
    except redis.RedisError:
        return 0
    return int(value.get("repl-diskless-sync-delay", 0) or 0)
