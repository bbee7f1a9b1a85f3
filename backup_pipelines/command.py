"""The `backup-pipelines` entry point: the WAL commands without the rest's imports.

PostgreSQL runs `wal-push` once per WAL file (every minute or faster), so it
starts from here without importing the sources, Dagster's or any other;
every other command is `cli.py`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from backup_pipelines.wal_commands import WAL_COMMANDS


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in WAL_COMMANDS:
        from backup_pipelines.wal_commands import main as wal_main

        return wal_main(argv)
    from backup_pipelines.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
