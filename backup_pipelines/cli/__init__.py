"""The `backup-pipelines` command: list, verify, drill, restore, prune and watch snapshots
without Dagster (`commands.py`, its arguments in `parser.py`), and PostgreSQL's `wal-push` /
`wal-fetch` (`wal.py`).

PostgreSQL runs `wal-push` once per WAL file (every minute or faster, or
back to back through a backlog), so `main` answers a segment pushed ahead
(`wal/ahead.py`), or given up while the store cannot be reached
(`wal/queue.py`), before importing anything, and sends the WAL commands to
their module before the rest: not the sources, not Dagster's, not the other
commands.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType

from backup_pipelines.wal import ahead

WAL_COMMANDS = ("wal-push", "wal-fetch")
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived: raised where the command is, so that every block it is in undoes what
    it began on the way out (a tool it started is killed, a staged snapshot removed), which
    the signal's default action (dying at once) would leave behind."""


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """The command, stopping cleanly on SIGTERM (exit 143)."""
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return _command(list(sys.argv[1:] if argv is None else argv))
    except Terminated:
        print("backup-pipelines: stopped by SIGTERM", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)


def _command(argv: list[str]) -> int:
    if argv[:1] == ["wal-push"] and ahead.pushed_ahead(argv[1:]):
        return 0
    if argv[:1] == ["wal-push"]:
        from backup_pipelines.wal import queue  # only when the segment was not pushed ahead

        if queue.given_up_at_once(argv[1:]):
            return 0
    if argv[:1] and argv[0] in WAL_COMMANDS:
        from backup_pipelines.cli import wal

        return wal.main(argv)
    from backup_pipelines.cli.commands import main as commands_main  # the sources: only here

    return commands_main(argv)
