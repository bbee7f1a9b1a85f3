"""Restoring PostgreSQL snapshots: roles, whole databases, and the drill that proves it works.

Each dump is streamed from the store into pg_restore (`stream_restore`):
nothing of it rests on disk in the clear. It is restored into a new
database of our own, which replaces the target only once the restore
succeeded and every stored byte matched the manifest, so an artifact that
turns out damaged halfway never reaches the target.
"""

from __future__ import annotations

import io
import re
import secrets
import time
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from backup_pipelines.errors import BackupError
from backup_pipelines.redaction import redact
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.snapshot.staging import logical_name
from backup_pipelines.snapshot.store import StoredSnapshot
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
from backup_pipelines.sources.postgres.globals_sql import (
    GlobalsRefused,
    role_of,
    role_statements,
    shown,
)
from backup_pipelines.sources.postgres.stream_restore import read_whole_dump, restore_dump
from backup_pipelines.sources.postgres.unprivileged import unprivileged_restore
from backup_pipelines.sources.source import Log

SCRATCH_NAME = re.compile(r"bp_(?:restore|replaced|drill)_(?P<made>[0-9]{10})_[0-9a-f]{8}")
"""The databases of ours `scratch_name` makes."""
LEFT_BEHIND_AGE = timedelta(days=1)


def snapshot_databases(snapshot: StoredSnapshot) -> list[str]:
    """The databases a snapshot holds, from its artifact names."""
    names = (logical_name(entry.name) for entry in snapshot.manifest.files)
    return sorted(database_of(name) for name in names if name.endswith(DUMP_SUFFIX))


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


def refuse_if_occupied(cluster: Cluster, target_db: str, force: bool) -> None:
    """Refuse a target database that has tables, unless `force`."""
    tables = table_count(cluster, target_db)
    if tables and not force:
        raise BackupError(
            f"database {target_db!r} on {cluster.where} already has {tables} tables; "
            "restore into an empty database, or add --force to replace it"
        )


def scratch_name(purpose: str) -> str:
    """A database name of our own, short enough for PostgreSQL's 63 bytes whatever the
    target's, saying when it was made (`sweep_left_behind` reads it)."""
    return f"bp_{purpose}_{int(time.time())}_{secrets.token_hex(4)}"


def sweep_left_behind(cluster: Cluster, log: Log) -> None:
    """Drop the databases of ours that a restore cut short (killed, its host lost) left on
    the server: named by `scratch_name`, made more than `LEFT_BEHIND_AGE` ago, and used by
    no session. One still in use, or young, may be a restore running now."""
    with cluster.connect(MAINTENANCE_DB) as connection:
        found = connection.execute(
            "SELECT datname FROM pg_database d WHERE datname LIKE 'bp\\_%' AND NOT EXISTS"
            " (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)"
        ).fetchall()
    for (name,) in found:
        ours = SCRATCH_NAME.fullmatch(name)
        if ours and time.time() - int(ours["made"]) > LEFT_BEHIND_AGE.total_seconds():
            log(f"dropping {name!r} on {cluster.where}: left by a restore cut short")
            _drop_left_behind(cluster, name, log)


def database_owner(connection: psycopg.Connection, name: str) -> str | None:
    row = connection.execute(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [name]
    ).fetchone()
    return row[0] if row else None


def swap_into_place(cluster: Cluster, restored: str, target_db: str, log: Log) -> None:
    """Give the restored database the target's name; the old one is dropped only after.

    The old database stops taking connections, its sessions are ended, and
    it is renamed aside; if the restored one cannot take its name, the old
    one gets it back. The restored database keeps the old one's owner.
    """
    with cluster.connect(_admin_db(target_db)) as connection:
        owner = database_owner(connection, target_db)
        if owner is None:
            _rename(connection, restored, target_db)
            return
        _keep_owner(connection, restored, owner, log)
        retired = scratch_name("replaced")
        log(f"replacing database {target_db!r} on {cluster.where} with the restored one")
        _close_database(connection, target_db)
        try:
            _rename(connection, target_db, retired)
        except psycopg.Error:
            _allow_connections(connection, target_db)
            raise
        try:
            _rename(connection, restored, target_db)
        except psycopg.Error:
            _rename(connection, retired, target_db)
            _allow_connections(connection, target_db)
            raise
        connection.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(retired)))


def _rename(connection: psycopg.Connection, old: str, new: str) -> None:
    connection.execute(
        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
    )


def _keep_owner(connection: psycopg.Connection, restored: str, owner: str, log: Log) -> None:
    try:
        connection.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(restored), sql.Identifier(owner)
            )
        )
    except psycopg.Error as exc:
        log(f"the restored database keeps the restoring user as its owner, not {owner!r}: {exc}")


def _close_database(connection: psycopg.Connection, name: str) -> None:
    """No new sessions on `name`, and the open ones ended (a rename needs it unused)."""
    connection.execute(
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name))
    )
    connection.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        [name],
    )


def _allow_connections(connection: psycopg.Connection, name: str) -> None:
    connection.execute(
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(name))
    )


def restore_database(
    reader: SnapshotReader,
    source_db: str,
    cluster: Cluster,
    target_db: str,
    figures: dict[str, Any],
    log: Log,
) -> None:
    """Restore one database of the snapshot into an existing, empty `target_db`."""
    log(f"restoring {source_db!r} into {target_db!r} on {cluster.where}")
    restore_dump(reader, dump_artifact(source_db), cluster, target_db, figures, log)


def apply_globals(reader: SnapshotReader, cluster: Cluster, log: Log) -> None:
    """Create the snapshot's roles (and tablespaces) on the target, keeping roles that exist.

    globals.sql (role passwords' hashes among it) comes from the store through memory (a few
    kilobytes, never on disk) and is applied as the statements `globals_sql.py` allows, one
    by one: a planted file is refused before anything changes. `CREATE ROLE` of a role that
    exists is skipped, and the role we are connected as is left untouched (changing its
    password mid-restore would lock this restore out)."""
    original = io.BytesIO()
    reader.restore_artifact(GLOBALS_ARTIFACT, original)
    statements = role_statements(original.getvalue().decode("utf-8", "replace"))
    log(f"applying roles and tablespaces to {cluster.where}")
    with cluster.connect(MAINTENANCE_DB) as connection:
        current_user = connection.execute("SELECT current_user").fetchone()[0]
        for kind, statement in statements:
            if role_of(kind, statement) == current_user:
                continue
            try:
                connection.execute(statement.encode("utf-8"))
            except psycopg.errors.DuplicateObject:
                if kind != "create role":
                    raise
            except psycopg.Error as exc:
                raise BackupError(
                    f"applying globals.sql to {cluster.where}: {shown(statement)} failed: "
                    f"{redact(str(exc).strip().splitlines()[0], cluster.secrets())}"
                ) from None


def restore_snapshot(
    reader: SnapshotReader,
    cluster: Cluster,
    *,
    database: str | None,
    include_globals: bool,
    force: bool,
    log: Log,
) -> str:
    """Restore one database (into the target DSN's database) or all of them (same names).

    Nothing the target holds is touched until the snapshot is proven: each
    dump is fetched, checked against its sha256, decrypted and restored by
    pg_restore into a new database of our own, and only when every one has
    been restored do they take their targets' names (the old databases are
    dropped after that). A damaged snapshot or a wrong age identity leaves
    every target as it was. The roles (`--globals`) are applied first, from
    a checked globals.sql, as the dumps need them.
    """
    pairs = _database_pairs(reader.snapshot, cluster, database)
    figures = reader.snapshot.manifest.stats.get("databases", {})
    for _, target_db in pairs:  # refuse before touching anything
        refuse_if_occupied(cluster, target_db, force)
    sweep_left_behind(cluster, log)
    if include_globals:
        apply_globals(reader, cluster, log)
    pending: list[tuple[str, str]] = []  # (our new database, the target it replaces)
    try:
        for source_db, target_db in pairs:
            scratch = scratch_name("restore")
            create_database(cluster, scratch, figures.get(source_db, {}), log)
            pending.append((scratch, target_db))
            restore_database(reader, source_db, cluster, scratch, figures.get(source_db, {}), log)
        while pending:
            swap_into_place(cluster, *pending[0], log)
            pending.pop(0)
    finally:
        for scratch, _ in pending:
            _drop_left_behind(cluster, scratch, log)
    names = ", ".join(f"{s} → {t}" if s != t else s for s, t in pairs)
    return f"restored {reader.where} ({names}) on {cluster.where}"


def _drop_left_behind(cluster: Cluster, scratch: str, log: Log) -> None:
    """Drop a database of ours after a failure, without hiding that failure."""
    try:
        drop_database(cluster, scratch)
    except (BackupError, psycopg.Error) as exc:
        log(f"could not drop the unfinished database {scratch!r} on {cluster.where}: {exc}")


def _database_pairs(
    snapshot: StoredSnapshot, cluster: Cluster, database: str | None
) -> list[tuple[str, str]]:
    """(database in the snapshot, database to restore it as) for each one to restore."""
    available = snapshot_databases(snapshot)
    if database is None:
        return [(name, name) for name in available]
    if database not in available:
        raise BackupError(
            f"snapshot {snapshot.snapshot_id} holds no database {database!r} "
            f"(it holds: {', '.join(available)})"
        )
    target_db = cluster.params.get("dbname") or database
    if target_db == MAINTENANCE_DB != database:
        raise BackupError(
            f"--target-dsn names the maintenance database {MAINTENANCE_DB!r}; put the "
            f"database to restore {database!r} into in the DSN (…/{database}_restored)"
        )
    return [(database, target_db)]


def deep_verify_dumps(reader: SnapshotReader) -> list[str]:
    """Every dump read whole by `pg_restore` (to no output), and globals.sql read as the
    statements a restore would apply."""
    problems = []
    for name in snapshot_databases(reader.snapshot):
        try:
            read_whole_dump(reader, dump_artifact(name))
        except BackupError as exc:
            problems.append(str(exc))
    roles = io.BytesIO()
    reader.restore_artifact(GLOBALS_ARTIFACT, roles)
    if b"PostgreSQL database cluster dump" not in roles.getvalue()[:4096]:
        problems.append(f"{GLOBALS_ARTIFACT}: not a pg_dumpall output")
    try:
        role_statements(roles.getvalue().decode("utf-8", "replace"))
    except GlobalsRefused as exc:
        problems.append(str(exc))
    return problems


def restore_drill(reader: SnapshotReader, cluster: Cluster, log: Log) -> dict[str, dict[str, Any]]:
    """On a drill's cluster: the roles first (globals.sql must apply), then each database into
    a scratch database of its own, restored by a role without privileges (`unprivileged.py`),
    its rows counted and compared, the database dropped."""
    apply_globals(reader, cluster, log)
    figures = reader.snapshot.manifest.stats.get("databases", {})
    results = {}
    with unprivileged_restore(cluster) as unprivileged:
        for name in snapshot_databases(reader.snapshot):
            scratch = scratch_name("drill")
            expected = figures.get(name, {}).get("row_counts", {})
            create_database(cluster, scratch, figures.get(name, {}), log)
            try:
                log(f"restoring {name!r} into {scratch!r} as {unprivileged.role}")
                restore_dump(
                    reader, dump_artifact(name), cluster, scratch, figures.get(name, {}), log,
                    unprivileged,
                )  # fmt: skip
                with cluster.connect(scratch) as connection:
                    restored = row_counts(connection)
            finally:
                drop_database(cluster, scratch)
            results[name] = _compared(expected, restored)
    return results


def _compared(expected: dict[str, int], restored: dict[str, int]) -> dict[str, Any]:
    """A drilled database's figures: its tables, rows, and where they differ from backup time."""
    differences = {
        table: {"expected": expected.get(table), "restored": restored.get(table)}
        for table in sorted(set(expected) | set(restored))
        if expected.get(table) != restored.get(table)
    }
    return {
        "tables": len(restored) - 1,
        "rows": sum(restored.values()),
        "row_counts": restored,
        "differences": differences,
    }
