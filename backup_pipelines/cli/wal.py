"""`backup-pipelines wal-push PATH` and `wal-fetch NAME DEST`: PostgreSQL's `archive_command`
and `restore_command` (the work is `operations/wal.py`'s).

The server runs them as its OS user, once per WAL file, so they import
neither Dagster nor the sources: only the store's settings (`BACKUP_*`).
They answer in the exit codes PostgreSQL acts on:

- `wal-push`: 0 once the file is durably stored (or an identical copy was);
  1 otherwise, and PostgreSQL keeps the file and tries again; 2 for a
  configuration error. Never above 125, which would stop the archiver.
- `wal-fetch`: 0 with the file written; 1 when the archive does not hold it,
  which PostgreSQL reads as the end of the archive; 255 for anything else
  (an unreachable store, a missing identity, a damaged file, a hole in the
  archive, a restore_command spelled wrong), which makes PostgreSQL stop
  recovery (an exit status above 125 does) instead of ending it early and
  promoting without the rest of the data.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backup_pipelines.errors import BackupError, ConfigurationError
from backup_pipelines.operations.wal import fetch, push, push_ahead
from backup_pipelines.redaction import redact
from backup_pipelines.services import load_services
from backup_pipelines.storage.names import TARGET_NAME

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_NOT_HELD = 1
EXIT_STOP_RECOVERY = 255


def target_name(text: str) -> str:
    if TARGET_NAME.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a target name")
    return text


def add_wal_commands(commands: Any) -> None:
    """The two commands' parsers, on the command's subparsers (`commands`)."""
    target_help = "the base backup target whose archive this is (a targets file's target)"
    push_ = commands.add_parser(
        "wal-push", help="archive one WAL file (archive_command = 'backup-pipelines wal-push %%p')"
    )
    push_.add_argument("path", type=Path, metavar="PATH", help="the WAL file (%%p)")
    push_.add_argument("--target", type=target_name, help=target_help)
    push_.add_argument("--ahead", type=int, metavar="FD", help=argparse.SUPPRESS)  # the helper
    fetch_ = commands.add_parser(
        "wal-fetch",
        help="write one archived WAL file (restore_command = 'backup-pipelines wal-fetch %%f %%p')",
    )
    fetch_.add_argument("name", metavar="NAME", help="the WAL file's name (%%f)")
    fetch_.add_argument("destination", type=Path, metavar="DEST", help="where to write it (%%p)")
    fetch_.add_argument("--target", type=target_name, help=target_help)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backup-pipelines")
    add_wal_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def run(args: argparse.Namespace) -> int:
    """One WAL command, its failure said on stderr (the server's log) in one line."""
    fetching = args.command == "wal-fetch"
    failing = EXIT_STOP_RECOVERY if fetching else EXIT_FAILURE

    def warn(line: str) -> None:
        print(f"backup-pipelines {args.command}: {line}", file=sys.stderr)

    secrets: list[str] = []
    try:
        services = load_services()
        secrets = services.secrets
        if not fetching and args.ahead is not None:
            push_ahead(services, args.path, args.target, args.ahead)
            return EXIT_OK
        if not fetching:
            push(services, args.path, args.target, warn)
            return EXIT_OK
        held = fetch(services, args.name, args.destination, args.target, warn)
        return EXIT_OK if held else EXIT_NOT_HELD
    except ConfigurationError as exc:
        said, code = redact(str(exc), secrets), failing if fetching else EXIT_USAGE
    except BackupError as exc:
        said, code = redact(str(exc), secrets), failing
    except Exception as exc:  # one line, never a traceback with a secret in it
        said, code = f"{type(exc).__name__}: {redact(str(exc), secrets)}", failing
    print(f"backup-pipelines {args.command}: error: {said}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("backup_pipelines.stores").setLevel(logging.ERROR)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stopped:
        # A restore_command spelled wrong must not read as "the archive ends here".
        if stopped.code and argv[:1] == ["wal-fetch"]:
            return EXIT_STOP_RECOVERY
        raise
    return run(args)
