"""`backup-pipelines wal-push PATH` and `wal-fetch NAME DEST`: PostgreSQL's `archive_command`
and `restore_command`, storing WAL in the archive (`wal_archive.py`).

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

Only failures leave an audit record: a record per WAL file would drown the trail.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from backup_pipelines.audit import AuditLog, Entry, Operation
from backup_pipelines.errors import BackupError, ConfigurationError
from backup_pipelines.redaction import redact
from backup_pipelines.settings import BackupSettings, read_settings, secret_values
from backup_pipelines.snapshot.encryption import load_identities, parse_recipients
from backup_pipelines.snapshot.names import TARGET_NAME
from backup_pipelines.storage.configured import build_store
from backup_pipelines.wal_archive import WalArchive, archive_named

WAL_COMMANDS = ("wal-push", "wal-fetch")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_NOT_HELD = 1
EXIT_STOP_RECOVERY = 255
NAME_SHOWN = 64
"""Of a WAL name as given, what an audit record keeps (a real one has at most 40 characters)."""


def target_name(text: str) -> str:
    if TARGET_NAME.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a target name")
    return text


def add_wal_commands(commands: Any) -> None:
    """The two commands' parsers, on the command's subparsers (`commands`)."""
    target_help = "the base backup target whose archive this is (a targets file's target)"
    push = commands.add_parser(
        "wal-push", help="archive one WAL file (archive_command = 'backup-pipelines wal-push %%p')"
    )
    push.add_argument("path", type=Path, metavar="PATH", help="the WAL file (%%p)")
    push.add_argument("--target", type=target_name, help=target_help)
    fetch = commands.add_parser(
        "wal-fetch",
        help="write one archived WAL file (restore_command = 'backup-pipelines wal-fetch %%f %%p')",
    )
    fetch.add_argument("name", metavar="NAME", help="the WAL file's name (%%f)")
    fetch.add_argument("destination", type=Path, metavar="DEST", help="where to write it (%%p)")
    fetch.add_argument("--target", type=target_name, help=target_help)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backup-pipelines")
    add_wal_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def archive_for(shared: BackupSettings, target: str | None) -> WalArchive:
    return WalArchive(build_store(shared), archive_named(target))


def wal_push(args: argparse.Namespace, shared: BackupSettings) -> int:
    """Compressed in the system's temporary directory, which the server's OS user can
    write (the staging area may be another user's)."""
    archive = archive_for(shared, args.target)
    recipients = parse_recipients(shared.encryption_recipients)
    archive.push(args.path, recipients, Path(tempfile.gettempdir()))
    return EXIT_OK


def wal_fetch(args: argparse.Namespace, shared: BackupSettings) -> int:
    archive = archive_for(shared, args.target)
    identities = partial(load_identities, shared.age_identity_file)
    if not archive.fetch(args.name, args.destination, identities):
        return EXIT_NOT_HELD
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """One WAL command, its failure said on stderr (the server's log) and in the audit trail."""
    failing = EXIT_STOP_RECOVERY if args.command == "wal-fetch" else EXIT_FAILURE
    secrets: list[str] = []
    shared: BackupSettings | None = None
    try:
        shared = read_settings(BackupSettings)
        secrets = secret_values(shared)
        command = wal_push if args.command == "wal-push" else wal_fetch
        return command(args, shared)
    except ConfigurationError as exc:
        said = redact(str(exc), secrets)
        code = failing if args.command == "wal-fetch" else EXIT_USAGE
    except BackupError as exc:
        said, code = redact(str(exc), secrets), failing
    except Exception as exc:  # one line, never a traceback with a secret in it
        said, code = f"{type(exc).__name__}: {redact(str(exc), secrets)}", failing
    print(f"backup-pipelines {args.command}: error: {said}", file=sys.stderr)
    if shared is not None:
        _audit_failure(shared, args, said, secrets)
    return code


def _audit_failure(
    shared: BackupSettings, args: argparse.Namespace, said: str, secrets: Sequence[str]
) -> None:
    operation: Operation = args.command
    asked = getattr(args, "name", None) or args.path.name
    entry = Entry(snapshots=[asked[:NAME_SHOWN]])  # as typed: it may not be a WAL name
    entry.failed(said)
    source = archive_named(args.target)
    AuditLog(build_store(shared), secrets).append(operation, entry, via="command", source=source)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("backup_pipelines.storage.configured").setLevel(logging.ERROR)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stopped:
        # A restore_command spelled wrong must not read as "the archive ends here".
        if stopped.code and argv[:1] == ["wal-fetch"]:
            return EXIT_STOP_RECOVERY
        raise
    return run(args)
