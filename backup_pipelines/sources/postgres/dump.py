"""Dumping a cluster into a staged snapshot: roles first, then one custom-format dump per database.

Each database is dumped with `pg_dump -Fc -Z0` (uncompressed: the
pipeline's multi-threaded zstd is faster and smaller than pg_dump's zlib)
into a pipe, straight through zstd (and age) into staging: no plain dump
ever rests on the backup host's disk. The table of contents then carries
no data offsets; the restore (`stream_restore`) gets its parallelism from
the stream instead. The stored artifact stays a plain custom-format dump
(`age -d | zstd -d | pg_restore`), as the README's disaster recovery says.

The dump is taken inside a snapshot exported by a transaction of ours, in
which we also count the rows of every table. The counts therefore describe
exactly what the dump holds, and the restore drill can compare against them
on a busy server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, unquote

import psycopg

from backup_pipelines.errors import ConfigurationError
from backup_pipelines.snapshot.staging import WARNING, StagedSnapshot
from backup_pipelines.sources.postgres.cluster import (
    Cluster,
    DatabaseInfo,
    row_counts,
    table_bytes,
)

GLOBALS_ARTIFACT = "globals.sql"
DUMP_SUFFIX = ".dump"


def dump_artifact(database: str) -> str:
    """A file name for any database name (they may hold '/', spaces, anything)."""
    return quote(database, safe="") + DUMP_SUFFIX


def database_of(artifact: str) -> str:
    return unquote(artifact.removesuffix(DUMP_SUFFIX))


def select_databases(cluster: Cluster, wanted: Sequence[str]) -> list[DatabaseInfo]:
    """The databases to dump: all of them, or those asked for (which must all exist)."""
    databases = cluster.list_databases()
    if not wanted:
        return databases
    by_name = {database.name: database for database in databases}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise ConfigurationError(
            f"BACKUP_POSTGRES_DATABASES names {', '.join(map(repr, missing))}, which "
            f"{'does' if len(missing) == 1 else 'do'} not exist on {cluster.where} "
            f"(there: {', '.join(sorted(by_name))})"
        )
    return [by_name[name] for name in wanted]


def dump_cluster(
    staged: StagedSnapshot,
    cluster: Cluster,
    wanted: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> None:
    """Stage `globals.sql` and one dump per database; record per-database figures in stats."""
    databases = select_databases(cluster, wanted)
    log(f"dumping {len(databases)} database(s) from {cluster.where}")
    staged.add_command(
        GLOBALS_ARTIFACT,
        ["pg_dumpall", "--globals-only", "--dbname", cluster.conninfo()],
        label=f"pg_dumpall --globals-only on {cluster.where}",
        env=cluster.child_env(),
        expect_prefix=b"--",
        secrets=cluster.secrets(),
    )
    figures: dict[str, Any] = {}
    for database in databases:
        figures[database.name] = dump_database(staged, cluster, database)
    staged.stats["databases"] = figures
    staged.stats["database_count"] = len(databases)
    staged.stats["server"] = cluster.where
    staged.stats["server_version"] = cluster.server_version()
    if not any(figure["tables"] for figure in figures.values()):
        staged.stats[WARNING] = (
            f"no database on {cluster.where} holds a table: if one should, "
            "BACKUP_POSTGRES_BACKUP_DSN (or BACKUP_POSTGRES_DATABASES) names the wrong server"
        )


def dump_database(
    staged: StagedSnapshot, cluster: Cluster, database: DatabaseInfo
) -> dict[str, Any]:
    label = f"pg_dump of database {database.name!r} on {cluster.where}"
    with cluster.connect(database.name, autocommit=False) as connection:
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        connection.read_only = True
        snapshot = connection.execute("SELECT pg_export_snapshot()").fetchone()[0]
        counts = row_counts(connection)
        sizes = table_bytes(connection)
        entry = staged.add_command(
            dump_artifact(database.name),
            [
                "pg_dump",
                "--format=custom",
                "--compress=0",
                f"--snapshot={snapshot}",
                "--dbname",
                cluster.conninfo(database.name),
            ],
            label=label,
            env=cluster.child_env(),
            expect_prefix=b"PGDMP",
            secrets=cluster.secrets(),
            expected_bytes=database.size_bytes,
        )
        connection.rollback()
    return {
        "size_bytes": database.size_bytes,
        "tables": len(counts) - 1,
        "dumped_bytes": staged.plain_bytes[entry.name],
        "stored_bytes": entry.size,
        "encoding": database.encoding,
        "collate": database.collate,
        "ctype": database.ctype,
        "row_counts": counts,
        "table_bytes": sizes,
    }
