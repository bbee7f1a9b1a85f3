"""The `backup-pipelines` command: list, verify, drill, restore, prune and watch snapshots
without Dagster (`commands.py`, its arguments in `parser.py`), and PostgreSQL's `wal-push` /
`wal-fetch` (`wal.py`).

PostgreSQL runs `wal-push` once per WAL file (every minute or faster), so
`main` sends the WAL commands to their module before anything else is
imported: not the sources, not Dagster's, not the other commands.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from backup_pipelines.cli import wal


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in wal.WAL_COMMANDS:
        return wal.main(argv)
    from backup_pipelines.cli.commands import main as commands_main  # the sources: only here

    return commands_main(argv)
