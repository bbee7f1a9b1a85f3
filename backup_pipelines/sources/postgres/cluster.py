"""A PostgreSQL cluster as the dump and restore tools see it: where it is, how to log in.

The password never goes on a command line (where `ps` shows it) nor into a
message: tools get a connection string without it, and the password only
through `PGPASSWORD` in their own environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from backup_pipelines.errors import (
    ConfigurationError,
    SourceRefused,
    SourceUnavailable,
    connection_cause,
)
from backup_pipelines.redaction import mask_url, redact

CONNECT_TIMEOUT_S = 10
MAINTENANCE_DB = "postgres"
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


class PostgresUnavailable(SourceUnavailable):
    """The server could not be reached; worth retrying (it may be restarting)."""


class PostgresRefused(SourceRefused):
    """The server answered no (bad password, no such database): retrying will not help."""


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    size_bytes: int
    encoding: str
    collate: str
    ctype: str


@dataclass(frozen=True)
class Cluster:
    """One server, reached through `dsn` (a URL or libpq keywords)."""

    dsn: str

    @cached_property
    def params(self) -> dict[str, str]:
        try:
            return {k: str(v) for k, v in conninfo_to_dict(self.dsn).items() if v is not None}
        except psycopg.ProgrammingError:
            raise ConfigurationError(
                f"not a valid PostgreSQL connection string: {mask_url(self.dsn)}"
            ) from None

    @property
    def password(self) -> str | None:
        return self.params.get("password")

    @property
    def default_db(self) -> str:
        return self.params.get("dbname") or MAINTENANCE_DB

    @property
    def user(self) -> str:
        return self.params.get("user") or os.environ.get("PGUSER") or "postgres"

    @property
    def where(self) -> str:
        """`host:port`, for messages."""
        host = self.params.get("host") or "localhost"
        return f"{host}:{self.params.get('port') or '5432'}"

    def conninfo(self, dbname: str | None = None) -> str:
        """A connection string for a command line: everything but the password."""
        params = {k: v for k, v in self.params.items() if k != "password"}
        params["dbname"] = dbname or self.default_db
        params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
        return make_conninfo("", **params)

    def child_env(self) -> dict[str, str]:
        """The environment for pg_dump and friends: ours, plus the password if any."""
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def secrets(self) -> list[str | None]:
        return [self.password]

    @contextmanager
    def connect(
        self, dbname: str | None = None, autocommit: bool = True
    ) -> Iterator[psycopg.Connection]:
        """A psycopg connection whose failures say where, which database, and whether to retry."""
        database = dbname or self.default_db
        try:
            connection = psycopg.connect(
                self.conninfo(database), password=self.password, autocommit=autocommit
            )
        except psycopg.OperationalError as exc:
            first_line = redact(str(exc).strip().splitlines()[0], self.secrets())
            # A server that answered has an SQLSTATE (bad password, unknown database):
            # retrying will not help. No answer at all may be a restart: retry.
            refused = getattr(exc, "sqlstate", None) or "authentication failed" in first_line
            cause = first_line if refused else connection_cause(exc) or first_line
            message = (
                f"cannot connect to PostgreSQL at {self.where}, database {database!r}: {cause}"
            )
            raise (PostgresRefused if refused else PostgresUnavailable)(message) from None
        try:
            yield connection
            if not autocommit:
                connection.commit()
        finally:
            # Closed without a rollback first: after a failure (a server that stopped
            # answering) a rollback would wait for an answer that may never come, and the
            # server rolls back what a closed session left open anyway.
            connection.close()

    def server_version(self) -> str:
        """`15.20 (Debian ...)`: a drill restores with this major version's binaries or newer."""
        with self.connect() as connection:
            return str(connection.execute("SHOW server_version").fetchone()[0])

    def list_databases(self) -> list[DatabaseInfo]:
        """Every database that accepts connections, templates excluded."""
        with self.connect() as connection:
            rows = connection.execute(
                "SELECT datname, pg_database_size(datname), pg_encoding_to_char(encoding),"
                " datcollate, datctype FROM pg_database"
                " WHERE NOT datistemplate AND datallowconn ORDER BY datname"
            ).fetchall()
        return [DatabaseInfo(*row) for row in rows]


USER_TABLES = (
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE (c.relkind = 'r' OR (c.relkind = 'm' AND c.relispopulated))"
    " AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_temp\\_%%'"
    " AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'"
)
"""Every table and populated materialized view outside the system schemas (a query's end)."""


def user_tables(connection: psycopg.Connection) -> list[tuple[str, str]]:
    """(schema, table) of every table and populated materialized view outside the system schemas."""
    query = f"SELECT n.nspname, c.relname {USER_TABLES} ORDER BY 1, 2"
    return connection.execute(query, [list(SYSTEM_SCHEMAS)]).fetchall()


def row_estimates(connection: psycopg.Connection) -> dict[str, int]:
    """The planner's row estimate of every user table (`schema.table`): the catalog alone,
    without reading a table (0 for one never analyzed)."""
    query = f"SELECT n.nspname || '.' || c.relname, greatest(c.reltuples, 0)::bigint {USER_TABLES}"
    return dict(connection.execute(query, [list(SYSTEM_SCHEMAS)]).fetchall())


def table_bytes(connection: psycopg.Connection) -> dict[str, int]:
    """Bytes of every table's rows (`pg_table_size`: heap and TOAST, no indexes) by
    `schema.table`: what a restore balances its parallel loads by."""
    rows = connection.execute(
        "SELECT n.nspname || '.' || c.relname, pg_table_size(c.oid) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND n.nspname <> ALL(%s)",
        [list(SYSTEM_SCHEMAS)],
    ).fetchall()
    return dict(rows)


def row_counts(connection: psycopg.Connection) -> dict[str, int]:
    """Exact rows per table (`schema.table`), and large objects under `pg_largeobject`.

    Counted in whatever snapshot the connection's transaction holds, so when
    it is the one pg_dump used, the counts describe exactly the dump.
    """
    counts = {}
    for schema, table in user_tables(connection):
        query = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        counts[f"{schema}.{table}"] = connection.execute(query).fetchone()[0]
    counts["pg_largeobject"] = connection.execute(
        "SELECT count(*) FROM pg_largeobject_metadata"
    ).fetchone()[0]
    return counts
