"""A drill's pg_restore logs in as a role without privileges: SQL in a dump is untrusted code.

A dump is a list of SQL statements, and a planted one (or a real one whose
materialized view calls a function) runs them during the restore:
`COPY ... TO PROGRAM` reaches the server's shell, `pg_read_server_files` its
files. A superuser runs them all. The drill therefore makes a login role with
no attribute at all, gives it the scratch database, and restores as it
(`--no-owner`: every object becomes the role's; `--no-privileges`: its grants
name roles it cannot act for). Such a role can create everything a database
holds except what only a superuser may: the superuser makes the dump's
extensions itself, by name, from installed packages (nothing of the dump's
text is run), and event triggers are left out and said so.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from backup_pipelines.errors import BackupError
from backup_pipelines.sources.postgres.cluster import Cluster
from backup_pipelines.sources.postgres.toc import Toc, TocEntry
from backup_pipelines.sources.source import Log

RESTORE_OPTIONS = (
    "--no-owner",
    "--no-privileges",
    "--no-comments",
    "--no-publications",
    "--no-subscriptions",
    "--no-security-labels",
)
"""What a role without privileges may not restore, and a drill does not need to prove."""
SUPERUSER_ONLY = ("EVENT TRIGGER",)
IDENTIFIER = r'"(?:[^"]|"")+"|[a-z_][a-z0-9_$]*'
CREATE_EXTENSION = re.compile(
    rf"CREATE EXTENSION IF NOT EXISTS (?P<name>{IDENTIFIER})"
    rf" WITH SCHEMA (?P<schema>{IDENTIFIER});\s*"
)
"""pg_dump's statement for an extension, and nothing else (`fullmatch`)."""


def unquoted(identifier: str) -> str:
    """`"Name"` → `Name`; `name` stays."""
    if identifier.startswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier


@dataclass(frozen=True)
class UnprivilegedRestore:
    """The role a drill restores as (`restorer` logs in as it), and the superuser that made it
    (`admin`), which prepares each scratch database for it."""

    admin: Cluster
    role: str
    restorer: Cluster

    def prepare(self, database: str, toc: Toc, log: Log) -> set[int]:
        """Give `database` to the role and make the dump's extensions (and the schemas they
        live in) as the superuser. Returns the dump ids pg_restore must leave out: those
        entries, and what only a superuser may create."""
        left_out = {entry.dump_id for entry in toc.entries if entry.desc in SUPERUSER_ONLY}
        if left_out:
            log(f"leaving out {len(left_out)} event trigger(s): only a superuser may create them")
        with self.admin.connect(database) as connection:
            connection.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(database), sql.Identifier(self.role)
                )
            )
            for entry in (e for e in toc.entries if e.desc == "EXTENSION"):
                schema = self._create_extension(connection, entry)
                left_out.add(entry.dump_id)
                left_out.update(
                    e.dump_id for e in toc.entries if e.desc == "SCHEMA" and e.tag == schema
                )
        return left_out

    def _create_extension(self, connection: psycopg.Connection, entry: TocEntry) -> str:
        """The extension of `entry`, made by name; returns the schema it lives in."""
        found = CREATE_EXTENSION.fullmatch(entry.definition)
        if found is None:
            raise BackupError(
                f"the dump's entry {entry.dump_id} (EXTENSION {entry.tag}) is not pg_dump's "
                "CREATE EXTENSION statement: the drill runs none of it"
            )
        name, schema = unquoted(found["name"]), unquoted(found["schema"])
        try:
            connection.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                    sql.Identifier(schema), sql.Identifier(self.role)
                )
            )
            connection.execute(
                sql.SQL("CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}").format(
                    sql.Identifier(name), sql.Identifier(schema)
                )
            )
        except psycopg.Error as exc:
            raise BackupError(
                f"the drill's server cannot create extension {name!r} the dump uses: "
                f"{str(exc).strip().splitlines()[0]} (install it where the drill runs)"
            ) from None
        return schema


@contextmanager
def unprivileged_restore(admin: Cluster) -> Iterator[UnprivilegedRestore]:
    """A role with no attribute (`NOSUPERUSER`, no `CREATEROLE`, no predefined role) and a
    password of its own, dropped when the block ends (after the scratch databases it owns).
    A scratch server named by `BACKUP_POSTGRES_DRILL_DSN` with a role that is no superuser
    already: that role itself."""
    current, superuser = _current_role(admin)
    if not superuser:
        yield UnprivilegedRestore(admin, current, admin)
        return
    role, password = f"bp_drill_role_{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    with admin.connect() as connection:
        connection.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    try:
        restorer = Cluster(make_conninfo(admin.dsn, user=role, password=password))
        yield UnprivilegedRestore(admin, role, restorer)
    finally:
        with admin.connect() as connection:
            connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _current_role(cluster: Cluster) -> tuple[str, bool]:
    """The role `cluster` logs in as, and whether it is a superuser."""
    with cluster.connect() as connection:
        row = connection.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    return str(row[0]), bool(row[1])
