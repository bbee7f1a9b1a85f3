"""Starting a data directory a base backup's restore prepared, and waiting until it has
recovered and promoted: the step an operator would otherwise take by hand, and the one that
proves the recovery reached its moment.

The server starts as PostgreSQL's OS user (when we are root) with this
process's environment, since its `restore_command` (`wal-fetch`) reads the
store with the same BACKUP_* settings and age identity. Its state is read
from `postmaster.pid`, whose last line the postmaster keeps current:
`starting` while it replays archived WAL, `standby` once consistent,
`ready` only after it has promoted and accepts writes. No connection is
needed, so the server's own authentication rules and sockets (from the
backed-up server's configuration) do not matter here.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from backup_pipelines.errors import BackupError
from backup_pipelines.processes import as_os_user
from backup_pipelines.sources.postgres.base.recovery import RECOVERY_LOG
from backup_pipelines.sources.postgres.scratch import SERVER_USER, server_bin_dir
from backup_pipelines.sources.source import Log

PID_FILE = "postmaster.pid"
STATUS_LINE = 7
"""`postmaster.pid`'s line (from 0) with the server's state (PostgreSQL 10 and later)."""
PROMOTED = "ready"
APPEARS_WITHIN_S = 30.0
"""How long a starting server may take to write its pid file."""
SAID_EVERY_S = 30.0
LOG_TAIL_BYTES = 2000


class RecoveryFailed(BackupError):
    """The restored server stopped before it promoted; the message ends with its log."""


def start_and_wait(directory: Path, port: int, major: int | None, log: Log) -> None:
    """Start `directory` on `port` and return once it has promoted; `RecoveryFailed` (naming
    its log) when it stops first."""
    server_log = directory / RECOVERY_LOG
    pg_ctl = server_bin_dir(major) / "pg_ctl"
    user = SERVER_USER if os.geteuid() == 0 else None
    try:
        started = subprocess.run(
            [str(pg_ctl), "-D", str(directory), "-l", str(server_log), "-o", f"-p {port}",
             "-W", "start"],
            **as_os_user(user), cwd="/", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"pg_ctl could not start {directory}: {exc}") from None
    if started.returncode != 0:
        said = " ".join((started.stderr or started.stdout).split())
        raise BackupError(f"pg_ctl could not start {directory}: {said}")
    log(f"started PostgreSQL in {directory} on port {port}: recovering (its log: {server_log})")
    wait_until_promoted(directory, server_log, log)
    log(f"PostgreSQL in {directory} has recovered and promoted, on port {port}")


def wait_until_promoted(directory: Path, server_log: Path, log: Log) -> None:
    """Until `postmaster.pid` says `ready`; saying how far replay got every half minute. A
    server gone once its pid file was there (or that never wrote one) stopped."""
    began = said = time.monotonic()
    seen = False
    while (state := server_state(directory)) != PROMOTED:
        waited = time.monotonic() - began
        seen = seen or state is not None
        if state is None and (seen or waited > APPEARS_WITHIN_S):
            raise RecoveryFailed(
                f"PostgreSQL in {directory} stopped before it promoted; the end of "
                f"{server_log}: {log_tail(server_log)}"
            )
        if time.monotonic() - said > SAID_EVERY_S:
            said = time.monotonic()
            progress = last_restored(server_log)
            log(f"PostgreSQL in {directory} still recovering ({waited:.0f} s): {progress}")
        time.sleep(0.2)


def server_state(directory: Path) -> str | None:
    """The running server's state from its pid file (`starting`, `standby`, `ready`), or None
    when none runs there (no file, or a stale one whose process is gone)."""
    try:
        lines = (directory / PID_FILE).read_text().splitlines()
        os.kill(int(lines[0]), 0)
    except (OSError, ValueError, IndexError):
        return None
    return lines[STATUS_LINE].strip() if len(lines) > STATUS_LINE else "starting"


def log_tail(server_log: Path) -> str:
    """The last lines the server wrote, on one line."""
    try:
        with server_log.open("rb") as written:
            written.seek(max(0, server_log.stat().st_size - LOG_TAIL_BYTES))
            return " ".join(written.read().decode("utf-8", "replace").split())
    except OSError:
        return "(no log)"


def last_restored(server_log: Path) -> str:
    """The last WAL file the server says it restored, as progress."""
    lines = log_tail(server_log).split("LOG:")
    found = [line.strip() for line in lines if "restored log file" in line]
    return found[-1] if found else "no WAL file restored yet"
