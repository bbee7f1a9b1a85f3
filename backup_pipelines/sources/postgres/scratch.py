"""Where a drill restores PostgreSQL: a throwaway cluster of its own, or a scratch server
named by `BACKUP_POSTGRES_DRILL_DSN`, never the cluster that was backed up.

The throwaway cluster is made with `initdb` from the server binaries of the
dump's major version (or the nearest newer one installed), in a directory
under the system's temporary directory, answering on a Unix socket in that
directory alone, with a password of its own (the restored data is production
data: no other local user may read it meanwhile); it keeps nothing (no
fsync) and is stopped and removed when the drill ends. PostgreSQL refuses to
run as root, and what it runs is the snapshot's SQL: when this process is
root the server runs as `nobody` (`unprivileged_user`), which owns the
directory and can read neither the age identity nor the `postgres` user's
own clusters, in a network namespace of its own, which reaches no network.
"""

from __future__ import annotations

import pwd
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from backup_pipelines.errors import BackupError, ConfigurationError
from backup_pipelines.processes import ToolFailed, ToolMissing, run_tool, unprivileged_user
from backup_pipelines.sources.postgres.cluster import Cluster
from backup_pipelines.sources.source import Log

SERVER_BINARIES = Path("/usr/lib/postgresql")
"""Debian's layout: one `<major>/bin` per installed server version."""
SOCKET_PORT = 5432
"""The throwaway cluster's port: only its socket's name, in a directory of its own."""
SERVER_USER = "postgres"
"""The OS user a recovered data directory (a base backup's) belongs to, as PostgreSQL's own."""
THROWAWAY_SETTINGS = {
    "listen_addresses": "''",  # its Unix socket only, in its own directory
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_wal_size": "'4GB'",
}


def major_version(version: str | None) -> int | None:
    """`15.20 (Debian 15.20-0+deb12u1)` → 15."""
    found = re.match(r"\s*(\d+)", version or "")
    return int(found.group(1)) if found else None


def server_bin_dir(major: int | None) -> Path:
    """The installed server binaries for a dump of `major`: that version, else the nearest
    newer (a dump restores into a newer server, not an older one)."""
    installed = sorted(
        int(path.parent.parent.name)
        for path in SERVER_BINARIES.glob("*/bin/initdb")
        if path.parent.parent.name.isdigit()
    )
    usable = [version for version in installed if major is None or version >= major]
    if not usable:
        wanted = f"PostgreSQL {major} or newer" if major else "PostgreSQL"
        raise ConfigurationError(
            f"the drill needs the server binaries of {wanted} (initdb) to make a scratch "
            f"cluster: install postgresql-{major or ''}, or set BACKUP_POSTGRES_DRILL_DSN"
        )
    return SERVER_BINARIES / str(usable[0] if major else usable[-1]) / "bin"


@contextmanager
def throwaway_cluster(major: int | None, log: Log) -> Iterator[Cluster]:
    """A new, empty cluster for the length of the block."""
    bin_dir = server_bin_dir(major)
    user = unprivileged_user()
    home = Path(tempfile.mkdtemp(prefix="backup-drill-postgres-"))
    data, password = home / "data", secrets.token_urlsafe(24)
    try:
        if user:
            shutil.chown(home, user)
        log(f"making a scratch PostgreSQL {bin_dir.parent.name} cluster in {home}")
        _initdb(bin_dir, data, password, user)
        settings = {**THROWAWAY_SETTINGS, "port": str(SOCKET_PORT),
                    "unix_socket_directories": f"'{home}'"}  # fmt: skip
        with (data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        start = ["-D", str(data), "-l", str(home / "server.log"), "-w", "-t", "60", "start"]
        _start_without_network(bin_dir, start, user, log)
        try:
            yield Cluster(
                f"postgresql://postgres:{password}@/postgres?host={home}&port={SOCKET_PORT}"
            )
        finally:
            _server_tool(bin_dir, "pg_ctl", ["-D", str(data), "-m", "immediate", "stop"], user)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _start_without_network(bin_dir: Path, args: list[str], user: str | None, log: Log) -> None:
    """`pg_ctl start` in a network namespace of its own (`unshare --net`), as `user`: the
    server answers on its Unix socket alone and reaches no network at all, whatever SQL the
    snapshot holds. Where namespaces cannot be made (not root, a container without the
    right), it starts as before, saying so."""
    if user is None:
        _server_tool(bin_dir, "pg_ctl", args, user)
        return
    gid = pwd.getpwnam(user).pw_gid
    isolated = ["unshare", "--net", "--", "setpriv", f"--reuid={user}", f"--regid={gid}",
                "--init-groups", str(bin_dir / "pg_ctl"), *args]  # fmt: skip
    try:
        run_tool(isolated, label="pg_ctl start of the drill's cluster", cwd=Path("/"))
    except (ToolFailed, ToolMissing) as exc:
        log(f"the drill's cluster starts with this host's network ({exc})")
        _server_tool(bin_dir, "pg_ctl", args, user)


def _initdb(bin_dir: Path, data: Path, password: str, user: str | None) -> None:
    """An empty cluster whose one superuser logs in with `password` only."""
    password_file = data.with_name("password")
    password_file.write_text(password)
    if user:
        shutil.chown(password_file, user)
    try:
        args = ["-D", str(data), "-U", "postgres", "-E", "UTF8", "--locale=C",
                "--auth=scram-sha-256", f"--pwfile={password_file}"]  # fmt: skip
        _server_tool(bin_dir, "initdb", args, user)
    finally:
        password_file.unlink(missing_ok=True)


def _server_tool(bin_dir: Path, tool: str, args: list[str], user: str | None) -> None:
    """Run as `user` from `/`: its own home may be closed to it."""
    label = f"{tool} of the drill's cluster"
    try:
        run_tool([str(bin_dir / tool), *args], label=label, user=user, cwd=Path("/"))
    except ToolFailed as exc:  # the drill cannot run here: not a verdict on the snapshot
        raise ConfigurationError(
            f"{exc} (can the {user or 'current'} OS user run {bin_dir} and write the temporary "
            "directory?)"
        ) from None


def system_identifier(cluster: Cluster) -> str | None:
    """The cluster's identity (unique per initdb), None when it cannot be asked."""
    try:
        with cluster.connect() as connection:
            row = connection.execute("SELECT system_identifier FROM pg_control_system()")
            return str(row.fetchone()[0])
    except (BackupError, psycopg.Error):
        return None


def refuse_the_backed_up_cluster(drill: Cluster, backed_up: Cluster) -> None:
    """A drill target that is the production cluster would put a full restore on it."""
    same_place = drill.where == backed_up.where
    mine, theirs = system_identifier(drill), system_identifier(backed_up)
    if same_place or (mine is not None and mine == theirs):
        raise ConfigurationError(
            f"BACKUP_POSTGRES_DRILL_DSN names the backed-up cluster ({drill.where}): a drill "
            "must restore elsewhere; name a scratch cluster, or unset it for a throwaway one"
        )


@contextmanager
def drill_target(
    drill_dsn: str | None, backed_up: Cluster, major: int | None, log: Log
) -> Iterator[Cluster]:
    """The cluster a drill restores into: the scratch server named, or a throwaway one."""
    if drill_dsn is None:
        with throwaway_cluster(major, log) as cluster:
            yield cluster
        return
    cluster = Cluster(drill_dsn)
    refuse_the_backed_up_cluster(cluster, backed_up)
    yield cluster
