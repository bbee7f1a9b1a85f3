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

import sys
from collections.abc import Sequence

from backup_pipelines.wal import ahead

WAL_COMMANDS = ("wal-push", "wal-fetch")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
