"""A throwaway PostgreSQL cluster that archives its WAL with this project's `wal-push`, and the
servers that `restore postgres_base` prepares, started as an operator would start them.

PostgreSQL refuses to run as root, so every server runs as the `postgres` OS
user, in a directory under the system's temporary directory that user owns
(pytest's own temporary directories are root's alone). The servers inherit
the test's environment, so `archive_command` and `restore_command` read
the same BACKUP_* settings (store, keys) as the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import psycopg

from backup_pipelines.processes import as_os_user, free_loopback_port
from backup_pipelines.sources.postgres.scratch import SERVER_USER, server_bin_dir

BIN = server_bin_dir(None)
COMMAND = Path(sys.executable).with_name("backup-pipelines")
ARCHIVING = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "replica",
    "archive_mode": "on",
    "archive_command": f"'{COMMAND} wal-push %p'",
    "fsync": "off",
}


def pg_ctl(data: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """pg_ctl as the server's OS user, with this process's environment."""
    return subprocess.run(
        [str(BIN / "pg_ctl"), "-D", str(data), *args],
        **as_os_user(SERVER_USER),
        cwd="/",
        capture_output=True,
        text=True,
        check=check,
    )


@cache
def check_server_user_runs_the_command() -> None:
    """archive_command runs as the server's OS user: it must reach this checkout's venv and
    the interpreter behind it (the README's permissions), or every test here would hang."""
    tried = subprocess.run(
        [str(COMMAND), "wal-push", "--help"],
        **as_os_user(SERVER_USER),
        cwd="/",
        capture_output=True,
    )
    assert tried.returncode == 0, (
        f"the {SERVER_USER} OS user cannot run {COMMAND} ({tried.stderr.decode().strip()}): "
        "make the checkout, its .venv and the interpreter it links to readable by that user"
    )


def owned_directory(prefix: str) -> Path:
    """A new directory the server's OS user owns."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.chown(path, SERVER_USER)
    return path


class Server:
    """One running server: a data directory on a loopback port, reached over TCP (trust)."""

    def __init__(self, data: Path, port: int, log: Path):
        self.data, self.port, self.log = data, port, log

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}", autocommit=True
        )

    def query(self, statement: str, dbname: str = "postgres") -> list[tuple]:
        with self.connect(dbname) as connection:
            cursor = connection.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def switch_wal(self, timeout_s: float = 60) -> str:
        """Close the current WAL segment and wait until the server says it is archived."""
        [(segment,)] = self.query("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            [(archived, failed)] = self.query(
                "SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver"
            )
            if archived and archived[:24] >= segment and archived[:8] == segment[:8]:
                return segment
            time.sleep(0.1)
        raise AssertionError(f"{segment} was not archived (last failed: {failed}): {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        pg_ctl(self.data, "-m", "fast", "-w", "stop", check=False)


@contextmanager
def archiving_cluster(**overrides: str) -> Iterator[Server]:
    """A new cluster (trust on loopback) archiving every WAL file through `wal-push`;
    `overrides` are postgresql.conf settings of its own (a bench's `archive_command`)."""
    check_server_user_runs_the_command()
    home = owned_directory("pitr-cluster-")
    data, port = home / "data", free_loopback_port()
    try:
        subprocess.run(
            [str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E",
             "UTF8", "--locale=C"],
            **as_os_user(SERVER_USER), cwd="/", capture_output=True, check=True,
        )  # fmt: skip
        settings = {**ARCHIVING, **overrides}
        with serving(home, port, "postgresql.conf", settings) as server:
            yield server
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def standby_of(primary: Server) -> Iterator[Server]:
    """A hot standby of `primary`, streaming from it (pg_basebackup -R), on a port of its own;
    it does not archive (archive_mode = on archives on the primary alone)."""
    home = owned_directory("pitr-standby-")
    port = free_loopback_port()
    try:
        subprocess.run(
            [str(BIN / "pg_basebackup"), "-D", str(home / "data"), "-R", "-X", "stream",
             "-d", primary.dsn, "--checkpoint=fast"],
            **as_os_user(SERVER_USER), cwd="/", capture_output=True, check=True,
        )  # fmt: skip
        with serving(home, port, "postgresql.auto.conf", {"hot_standby": "on"}) as server:
            yield server
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def serving(home: Path, port: int, conf: str, settings: dict[str, str]) -> Iterator[Server]:
    """The data directory `home/data` started on `port` (its socket in `home`) with `settings`
    appended to its `conf` file, and stopped after the block."""
    data = home / "data"
    settings = {"port": str(port), "unix_socket_directories": f"'{home}'", **settings}
    with (data / conf).open("a") as written:
        written.writelines(f"{name} = {value}\n" for name, value in settings.items())
    server = Server(data, port, home / "server.log")
    pg_ctl(data, "-l", str(server.log), "-w", "start")
    try:
        yield server
    finally:
        server.stop()


def replayed(standby: Server, primary: Server, timeout_s: float = 60) -> None:
    """Until the standby has replayed everything the primary has written so far."""
    [(written,)] = primary.query("SELECT pg_current_wal_lsn()::text")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        [(caught_up,)] = standby.query(f"SELECT pg_last_wal_replay_lsn() >= '{written}'::pg_lsn")
        if caught_up:
            return
        time.sleep(0.1)
    raise AssertionError(f"the standby did not replay up to {written}: {standby.tail()}")


def start_restored(data: Path, timeout_s: float = 120) -> Server:
    """Start a directory `restore postgres_base` prepared, on a port of its own, and wait
    until it has recovered and promoted; `RecoveryFailed` with its log when it stops."""
    port, log = free_loopback_port(), data.parent / f"{data.name}.log"
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data.parent}"
    started = pg_ctl(data, "-l", str(log), "-o", options, "-W", "start", check=False)
    assert started.returncode == 0, started.stderr + started.stdout
    server = Server(data, port, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            if server.query("SELECT pg_is_in_recovery()") == [(False,)]:
                return server
        except psycopg.Error:
            pass
        if not (data / "postmaster.pid").exists():
            raise RecoveryFailed(server.tail())
    server.stop()
    raise AssertionError(f"{data} did not promote within {timeout_s} s: {server.tail()}")


class RecoveryFailed(AssertionError):
    """The restored server stopped during recovery; the message is its log."""


def server_writable(path: Path) -> Path:
    """A local store's root the server's OS user may write into (its `postgres_wal/`), as
    the README asks of a local store."""
    path.mkdir()
    path.chmod(0o700)
    shutil.chown(path, SERVER_USER)
    return path


def restore_dir(prefix: str = "pitr-restore-") -> Path:
    """Where a restore prepares a data directory: inside a directory the server user owns."""
    return owned_directory(prefix) / "data"


def remove_restore(data: Path) -> None:
    shutil.rmtree(data.parent, ignore_errors=True)


def readable_by_server(path: Path) -> Path:
    """`path` made readable by the server's OS user (an identity file, for wal-fetch)."""
    shutil.chown(path, SERVER_USER)
    os.chmod(path, 0o600)
    return path
