"""Preparing a data directory from a base backup: the tar unpacked, and PostgreSQL told to
recover from the WAL archive (through `wal-fetch`) to a moment or the archive's end, then
promote.

The tar is unpacked as it is read (no local copy of it), into a new
directory beside the target, which takes the target's place only once the
stored bytes proved equal to the manifest: a damaged snapshot never
replaces anything. Only files, folders and links that stay inside the
directory are unpacked, so a stored tar cannot write elsewhere or create
devices.

The restored server is not started here: the command prints how, or
`promotion.py` starts it (`--port`). Its
`restore_command` is this installation's `wal-fetch`, reading the store
with the environment the server starts with (the BACKUP_* variables, and
the age identity for an encrypted archive). Archiving is switched off in
the restored cluster unless asked to keep it: a trial restore beside the
live server must not push a new timeline into the archive that later
recoveries would follow.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from backup_pipelines.errors import ConfigurationError
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.sources.postgres.base.basebackup import BASE_ARTIFACT
from backup_pipelines.sources.postgres.base.untar import untar_artifact
from backup_pipelines.sources.postgres.scratch import SERVER_USER, server_bin_dir
from backup_pipelines.storage.names import split_source

RECOVERY_SIGNAL = "recovery.signal"
AUTO_CONF = "postgresql.auto.conf"
RECOVERY_LOG = "recovery.log"
"""The server's log while it recovers, in its data directory (`pg_ctl -l`)."""


def wal_fetch_command(archive: str) -> str:
    """`restore_command`: this installation's `backup-pipelines wal-fetch`, by absolute path
    (the server's PATH may not have it)."""
    installed = Path(sys.executable).with_name("backup-pipelines")
    program = str(installed) if installed.exists() else shutil.which("backup-pipelines")
    target = split_source(archive)[1]
    flags = f" --target {target}" if target else ""
    return f'{shlex.quote(program or "backup-pipelines")} wal-fetch{flags} %f "%p"'


def conf_value(value: str) -> str:
    """A postgresql.conf string: single-quoted, quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def refuse_occupied(target: Path, force: bool) -> None:
    """A directory a server runs in is never touched; another not empty only with `force`."""
    if (target / "postmaster.pid").exists():
        raise ConfigurationError(
            f"{target} holds postmaster.pid: stop the server running there first (or remove "
            "the file if none is)"
        )
    if target.exists() and not target.is_dir():
        raise ConfigurationError(f"{target} is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ConfigurationError(f"{target} is not empty: pass --force to replace it")


def unpack_base(reader: SnapshotReader, directory: Path) -> None:
    """Unpack the snapshot's `base.tar` into `directory` as it streams from the store
    (`untar.py`); raises (leaving `directory` for the caller to remove) unless every member
    was acceptable and every stored byte proved sound."""
    untar_artifact(reader, BASE_ARTIFACT, directory)


def recovery_settings(
    archive: str, target_time: datetime | None, keep_archiving: bool
) -> dict[str, str]:
    settings = {"restore_command": conf_value(wal_fetch_command(archive))}
    if target_time is not None:
        moment = target_time.astimezone(UTC).isoformat(sep=" ")
        settings["recovery_target_time"] = conf_value(moment)
    settings["recovery_target_action"] = "'promote'"
    if not keep_archiving:
        settings["archive_mode"] = "'off'"
    return settings


def configure_recovery(directory: Path, settings: dict[str, str], why: str) -> None:
    """`recovery.signal`, and `settings` appended to postgresql.auto.conf (read last, so they
    win over what the backed-up server's configuration said)."""
    (directory / RECOVERY_SIGNAL).touch()
    (directory / "standby.signal").unlink(missing_ok=True)
    with (directory / AUTO_CONF).open("a") as conf:
        conf.write(f"\n# {why}\n")
        conf.writelines(f"{name} = {value}\n" for name, value in settings.items())


def hand_to_server_user(directory: Path) -> None:
    """The data directory as the server wants it: its OS user's (when we are root), 0700."""
    directory.chmod(0o700)
    if os.geteuid() != 0:
        return
    owner = pwd.getpwnam(SERVER_USER)
    for folder, folders, files in os.walk(directory):
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        for name in files:
            os.chown(os.path.join(folder, name), owner.pw_uid, owner.pw_gid, follow_symlinks=False)
        for name in folders:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                os.chown(path, owner.pw_uid, owner.pw_gid, follow_symlinks=False)


def start_command(directory: Path, major: int | None) -> str:
    """How the operator starts the prepared directory: pg_ctl of the backup's major version,
    as the server's OS user when we are root, keeping the environment for wal-fetch."""
    try:
        pg_ctl = str(server_bin_dir(major) / "pg_ctl")
    except ConfigurationError:
        pg_ctl = "pg_ctl"
    where = shlex.quote(str(directory.absolute()))
    command = f"{pg_ctl} -D {where} -l {where}/{RECOVERY_LOG} start"
    if os.geteuid() == 0:
        return f"runuser -u {SERVER_USER} --preserve-environment -- {command}"
    return command


@contextlib.contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A new directory beside `target`, moved into its place when the block succeeds (what
    was there removed), and removed when it fails."""
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{target.name}.restoring-", dir=target.parent))
    try:
        yield fresh
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    fresh.rename(target)
