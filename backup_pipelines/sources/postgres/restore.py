"""Restoring PostgreSQL snapshots: roles, whole databases, and the drill that proves it works.

Each dump is fetched, checked against its sha256, decrypted and
decompressed into a local temporary file first, because `pg_restore -j`
(parallel restore, several times faster) needs a seekable file, and
because nothing should reach the target from an artifact that turns out
damaged halfway.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pyrage import x25519

from backup_pipelines.errors import BackupError
from backup_pipelines.processes import run_tool
from backup_pipelines.snapshot.reader import artifact_file
from backup_pipelines.snapshot.staging import logical_name
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot
from backup_pipelines.sources import Log
from backup_pipelines.sources.postgres.cluster import (
    MAINTENANCE_DB,
    Cluster,
    row_counts,
    user_tables,
)
from backup_pipelines.sources.postgres.dump import (
    DUMP_SUFFIX,
    GLOBALS_ARTIFACT,
    database_of,
    dump_artifact,
)

ROLE_STATEMENT = re.compile(r'^(CREATE|ALTER) ROLE ("(?:[^"]|"")+"|[^\s;]+)(;| WITH .*;)$')


def snapshot_databases(snapshot: StoredSnapshot) -> list[str]:
    """The databases a snapshot holds, from its artifact names."""
    names = (logical_name(entry.name) for entry in snapshot.manifest.files)
    return sorted(database_of(name) for name in names if name.endswith(DUMP_SUFFIX))


def parallel_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def _admin_db(target_db: str) -> str:
    """A database to connect to while creating or dropping `target_db`."""
    return "template1" if target_db == MAINTENANCE_DB else MAINTENANCE_DB


def table_count(cluster: Cluster, database: str) -> int | None:
    """Tables in `database`, or None when it does not exist."""
    with cluster.connect(_admin_db(database)) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [database]
        ).fetchone()
    if not exists:
        return None
    with cluster.connect(database) as connection:
        return len(user_tables(connection))


def create_database(cluster: Cluster, name: str, figures: dict[str, Any], log: Log) -> None:
    """Create `name` like the original: template0, same encoding and locale where possible."""
    base = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    encoding = sql.SQL(" ENCODING {}").format(sql.Literal(figures.get("encoding", "UTF8")))
    locale = sql.SQL(" LC_COLLATE {} LC_CTYPE {}").format(
        sql.Literal(figures.get("collate", "C")), sql.Literal(figures.get("ctype", "C"))
    )
    with cluster.connect(_admin_db(name)) as connection:
        try:
            connection.execute(base + encoding + locale)
        except psycopg.errors.InvalidParameterValue:
            log(
                f"locale {figures.get('collate')} is not available on {cluster.where}; "
                "creating the database with the server's default locale"
            )
            connection.execute(base + encoding)


def drop_database(cluster: Cluster, name: str) -> None:
    with cluster.connect(_admin_db(name)) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def refuse_if_occupied(cluster: Cluster, target_db: str, force: bool) -> int | None:
    """Tables in `target_db` (None if it does not exist); refuse a non-empty one without force."""
    tables = table_count(cluster, target_db)
    if tables and not force:
        raise BackupError(
            f"database {target_db!r} on {cluster.where} already has {tables} tables; "
            "restore into an empty database, or add --force to drop and recreate it"
        )
    return tables


def prepare_target(
    cluster: Cluster, target_db: str, figures: dict[str, Any], force: bool, log: Log
) -> None:
    """Make `target_db` an empty database to restore into, or refuse.

    A database that already has tables is left alone unless `force`, and
    with `force` it is dropped and created anew so it ends equal to the
    snapshot, not a mix of old and restored objects.
    """
    tables = refuse_if_occupied(cluster, target_db, force)
    if tables is not None and force:
        log(f"dropping database {target_db!r} on {cluster.where} (--force)")
        drop_database(cluster, target_db)
    if tables is None or force:
        create_database(cluster, target_db, figures, log)


def restore_database(
    store: SnapshotStore,
    snapshot: StoredSnapshot,
    source_db: str,
    cluster: Cluster,
    target_db: str,
    identities: Sequence[x25519.Identity],
    work_dir: Path,
    log: Log,
) -> None:
    """Restore one database of the snapshot into an existing, empty `target_db`."""
    with artifact_file(store, snapshot, dump_artifact(source_db), identities, work_dir) as dump:
        log(
            f"restoring {source_db!r} into {target_db!r} on {cluster.where} "
            f"with {parallel_jobs()} jobs"
        )
        try:
            run_tool(
                [
                    "pg_restore",
                    "--exit-on-error",
                    f"--jobs={parallel_jobs()}",
                    "--dbname",
                    cluster.conninfo(target_db),
                    str(dump),
                ],
                label=f"pg_restore of {source_db!r} into {target_db!r} on {cluster.where}",
                env=cluster.child_env(),
                secrets=cluster.secrets(),
            )
        except BackupError as exc:
            hint = " (restore the roles first with --globals)" if "role" in str(exc) else ""
            raise BackupError(f"{exc}{hint}") from None


def _unquote(identifier: str) -> str:
    if identifier.startswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier


def tolerant_globals(lines: Sequence[str], current_user: str) -> list[str]:
    """pg_dumpall's role statements, made safe to apply to a server that has roles already.

    `CREATE ROLE x` becomes a no-op when x exists (pg_dumpall emits it even
    for `postgres`), and the role we are connected as is left untouched:
    changing its password mid-restore would lock this restore out.
    """
    result = []
    for line in lines:
        match = ROLE_STATEMENT.match(line.rstrip("\n"))
        if match and _unquote(match.group(2)) == current_user:
            result.append(
                f"-- kept as is (the restoring user): {match.group(1)} ROLE {match.group(2)}\n"
            )
        elif match and match.group(1) == "CREATE":
            result.append(
                f"DO $restore$ BEGIN CREATE ROLE {match.group(2)}; "
                "EXCEPTION WHEN duplicate_object THEN NULL; END $restore$;\n"
            )
        else:
            result.append(line)
    return result


def apply_globals(
    store: SnapshotStore,
    snapshot: StoredSnapshot,
    cluster: Cluster,
    identities: Sequence[x25519.Identity],
    work_dir: Path,
    log: Log,
) -> None:
    """Create the snapshot's roles (and tablespaces) on the target, keeping roles that exist."""
    with cluster.connect() as connection:
        current_user = connection.execute("SELECT current_user").fetchone()[0]
    with artifact_file(store, snapshot, GLOBALS_ARTIFACT, identities, work_dir) as original:
        tolerant = original.with_name("globals-tolerant.sql")
        with original.open() as lines:
            tolerant.write_text("".join(tolerant_globals(list(lines), current_user)))
        log(f"applying roles and tablespaces to {cluster.where}")
        run_tool(
            [
                "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                str(tolerant),
                "--dbname",
                cluster.conninfo(MAINTENANCE_DB),
            ],
            label=f"applying globals.sql to {cluster.where}",
            env=cluster.child_env(),
            secrets=cluster.secrets(),
        )


def restore_snapshot(
    store: SnapshotStore,
    snapshot: StoredSnapshot,
    cluster: Cluster,
    *,
    database: str | None,
    include_globals: bool,
    force: bool,
    identities: Sequence[x25519.Identity],
    work_dir: Path,
    log: Log,
) -> str:
    """Restore one database (into the target DSN's database) or all of them (same names)."""
    available = snapshot_databases(snapshot)
    if database is not None and database not in available:
        raise BackupError(
            f"snapshot {snapshot.snapshot_id} holds no database {database!r} "
            f"(it holds: {', '.join(available)})"
        )
    if database is not None:
        target_db = cluster.params.get("dbname") or database
        if target_db == MAINTENANCE_DB != database:
            raise BackupError(
                f"--target-dsn names the maintenance database {MAINTENANCE_DB!r}; put the "
                f"database to restore {database!r} into in the DSN (…/{database}_restored)"
            )
        pairs = [(database, target_db)]
    else:
        pairs = [(name, name) for name in available]
    figures = snapshot.manifest.stats.get("databases", {})
    for _, target_db in pairs:  # refuse before touching anything
        refuse_if_occupied(cluster, target_db, force)
    work_dir.mkdir(parents=True, exist_ok=True)
    if include_globals:
        apply_globals(store, snapshot, cluster, identities, work_dir, log)
    for source_db, target_db in pairs:
        prepare_target(cluster, target_db, figures.get(source_db, {}), force, log)
        restore_database(store, snapshot, source_db, cluster, target_db, identities, work_dir, log)
    restored = ", ".join(f"{s} → {t}" if s != t else s for s, t in pairs)
    return f"restored postgres/{snapshot.snapshot_id} ({restored}) on {cluster.where}"


def deep_verify_dumps(
    store: SnapshotStore,
    snapshot: StoredSnapshot,
    identities: Sequence[x25519.Identity],
    work_dir: Path,
) -> list[str]:
    """`pg_restore --list` over every dump, and a header check of globals.sql."""
    problems = []
    for name in snapshot_databases(snapshot):
        try:
            with artifact_file(store, snapshot, dump_artifact(name), identities, work_dir) as dump:
                run_tool(
                    ["pg_restore", "--list", str(dump)], label=f"pg_restore --list of {name!r}"
                )
        except BackupError as exc:
            problems.append(str(exc))
    with (
        artifact_file(store, snapshot, GLOBALS_ARTIFACT, identities, work_dir) as globals_sql,
        globals_sql.open("rb") as header,
    ):
        if b"PostgreSQL database cluster dump" not in header.read(4096):
            problems.append(f"{GLOBALS_ARTIFACT}: not a pg_dumpall output")
    return problems


def restore_drill(
    store: SnapshotStore,
    snapshot: StoredSnapshot,
    cluster: Cluster,
    identities: Sequence[x25519.Identity],
    work_dir: Path,
    log: Log,
) -> dict[str, dict[str, Any]]:
    """Restore each database into a scratch database, count rows, drop it; return the comparison."""
    figures = snapshot.manifest.stats.get("databases", {})
    work_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for index, name in enumerate(snapshot_databases(snapshot)):
        scratch = f"drill_{snapshot.snapshot_id.replace('-', '_').lower()}_{index}"
        expected = figures.get(name, {}).get("row_counts", {})
        create_database(cluster, scratch, figures.get(name, {}), log)
        try:
            restore_database(store, snapshot, name, cluster, scratch, identities, work_dir, log)
            with cluster.connect(scratch) as connection:
                restored = row_counts(connection)
        finally:
            drop_database(cluster, scratch)
        differences = {
            table: {"expected": expected.get(table), "restored": restored.get(table)}
            for table in sorted(set(expected) | set(restored))
            if expected.get(table) != restored.get(table)
        }
        results[name] = {
            "tables": len(restored) - 1,
            "rows": sum(restored.values()),
            "differences": differences,
        }
    return results
