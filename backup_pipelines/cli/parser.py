"""The command's arguments, made from the configured sources and the registry: each source's
name (a kind, or `<kind>.<target>`) and each one's restore flags.

When the configuration cannot be read the kinds themselves stand in, so
`--help` and usage errors still answer; the configuration error is said
after parsing.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from datetime import datetime
from itertools import pairwise
from pathlib import Path

from backup_pipelines.cli.wal import add_wal_commands
from backup_pipelines.redaction import secret_parts
from backup_pipelines.snapshot.manifest import typed_moment
from backup_pipelines.snapshot.store import LATEST
from backup_pipelines.sources.registry import SOURCES
from backup_pipelines.sources.source import SECRET_OPTION, RestoreOptions, Source
from backup_pipelines.stores import PRIMARY

SNAPSHOT_HELP = (
    "a snapshot id (YYYYMMDDTHHMMSSZ-xxxxxxxx, see `snapshots`), or latest (the default)"
)


def add_restore_flags(parser: argparse.ArgumentParser, options: type[RestoreOptions]) -> None:
    """One flag per field of the source's restore options; the description is its help."""
    for name, info in options.model_fields.items():
        if info.annotation is bool:
            parser.add_argument(
                options.flag(name), dest=name, action="store_true", help=info.description
            )
            continue
        parser.add_argument(
            options.flag(name),
            dest=name,
            required=info.is_required(),
            metavar=options.metavar(name),
            help=info.description,
        )


def add_snapshot_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--snapshot", default=LATEST, metavar="ID|latest", help=SNAPSHOT_HELP)


def since_time(text: str) -> datetime:
    """`--since`, `--at`: an ISO-8601 date or time; without a zone, UTC."""
    try:
        return typed_moment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_store_flag(parser: argparse.ArgumentParser, stores: Sequence[str], help: str) -> None:
    """`--store NAME`, one of `stores` (the configured ones)."""
    parser.add_argument(
        "--store", choices=list(stores), metavar="NAME", help=f"{help}: {', '.join(stores)}"
    )


def build_parser(
    sources: Mapping[str, type[Source]] | None = None, stores: Sequence[str] = (PRIMARY,)
) -> argparse.ArgumentParser:
    """The command for `sources` (each source's name and its kind) and `stores` (the
    primary first): the configured ones, or the kinds and the primary alone when the
    configuration could not be read."""
    if sources is None:
        sources = {source.kind: source for source in SOURCES}
    reads = "read this store instead of the primary"
    names = list(sources)
    source_help = f"one of {', '.join(names)}"
    groups = [*names, *dict.fromkeys(k.kind for name, k in sources.items() if name != k.kind)]
    group_help = (
        f"{source_help}, or a kind (all its targets)" if len(groups) > len(names) else source_help
    )
    parser = argparse.ArgumentParser(
        prog="backup-pipelines",
        description="List, verify, drill, restore and prune backup snapshots (works without "
        "Dagster). Configuration comes from the BACKUP_* environment.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    snapshots = commands.add_parser("snapshots", help="list complete snapshots, newest first")
    snapshots.add_argument(
        "source", nargs="?", choices=groups, help=f"{group_help}; without it, every source"
    )
    snapshots.add_argument("--json", action="store_true", help="print manifests as JSON")
    add_store_flag(snapshots, stores, reads)

    status = commands.add_parser(
        "status", help="each source's last good snapshot, and the backup failure since, if any"
    )
    status.add_argument(
        "source", nargs="?", choices=groups, help=f"{group_help}; without it, every source"
    )
    status.add_argument("--json", action="store_true", help="print the standings as JSON")

    verify = commands.add_parser("verify", help="re-read snapshots and check them")
    verify.add_argument(
        "source", nargs="?", choices=groups, help=f"{group_help}; without it, every source"
    )
    add_snapshot_flag(verify)
    verify.add_argument("--deep", action="store_true", help="also prove it restorable")
    add_store_flag(verify, stores, reads)

    drill = commands.add_parser(
        "drill", help="restore a snapshot into a scratch target and compare it with its manifest"
    )
    drill.add_argument("source", choices=names, help=source_help)
    add_snapshot_flag(drill)
    drill.add_argument("--json", action="store_true", help="print what the drill proved as JSON")
    add_store_flag(drill, stores, reads)

    restore = commands.add_parser("restore", help="restore a snapshot into a target")
    targets = restore.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, kind in sources.items():
        target = targets.add_parser(name, help=f"restore a {name} snapshot")
        add_snapshot_flag(target)
        add_restore_flags(target, kind.restore_options)
        add_store_flag(
            target,
            stores,
            "read this store (without it: the primary, or the first copy that holds the "
            "snapshot when the primary cannot be reached)",
        )

    recover = commands.add_parser(
        "recover",
        help="recover every source the into file names to one moment, in the runbook's order",
    )
    recover.add_argument(
        "--at",
        type=since_time,
        required=True,
        metavar="T",
        help="the moment (ISO-8601; UTC if no zone): each source from its newest snapshot "
        "complete then, or a base backup and its WAL replayed to exactly T",
    )
    recover.add_argument(
        "--into",
        type=Path,
        required=True,
        metavar="FILE",
        help="YAML: each source to recover, with the options restore takes (target_dsn: ..., "
        "target_url: ..., target_dir: ...); sources it leaves out are skipped",
    )
    recover.add_argument(
        "--plan", action="store_true", help="say what would be restored from where; restore nothing"
    )
    recover.add_argument("--json", action="store_true", help="print the report as JSON")
    add_store_flag(
        recover,
        stores,
        "read this store (without it: the primary, or the first copy store that holds a "
        "source's snapshots when the primary cannot be reached)",
    )

    metrics = commands.add_parser(
        "metrics", help="Prometheus metrics of every source, read from the store alone"
    )
    where = metrics.add_mutually_exclusive_group(required=True)
    where.add_argument("--textfile", type=Path, metavar="PATH", help="write them to PATH once")
    where.add_argument(
        "--listen", metavar="HOST:PORT", help="serve /metrics on HOST:PORT until stopped"
    )

    audit = commands.add_parser(
        "audit", help="every backup, restore, verify, drill and prune, newest first"
    )
    audit.add_argument("--source", choices=groups, help=group_help)
    audit.add_argument(
        "--since", type=since_time, metavar="T", help="only from T on (ISO-8601; UTC if no zone)"
    )
    audit.add_argument("--json", action="store_true", help="print the records as JSON")
    add_store_flag(audit, stores, reads)

    copy = commands.add_parser(
        "copy", help="bring the copy stores up to date with the primary (3-2-1)"
    )
    copy.add_argument(
        "source", nargs="?", choices=groups, help=f"{group_help}; without it, every source"
    )
    add_store_flag(copy, stores[1:], "only this copy store")
    copy.add_argument(
        "--json",
        action="store_true",
        help="print what was copied, and what is still missing, as JSON",
    )

    add_wal_commands(commands)

    prune = commands.add_parser("prune", help="delete snapshots the retention rules drop")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    prune.add_argument("--json", action="store_true", help='print {"keep": [...], "delete": [...]}')
    add_store_flag(prune, stores, "only this store (without it: every store, by its own rules)")
    return parser


def command_line_secrets(argv: Sequence[str]) -> list[str]:
    """Secrets typed on the command line: a password inside a URL or DSN
    (`--target-url scheme://user:pw@host`), and every value after a secret option's flag."""
    secret_flags = {
        model.flag(name)
        for model in (source.restore_options for source in SOURCES)
        for name, info in model.model_fields.items()
        if info.json_schema_extra == SECRET_OPTION
    }
    found = [part for arg in argv for part in secret_parts(arg)[1:]]
    for flag, value in pairwise(argv):
        if flag in secret_flags:
            found.append(value)
    for arg in argv:
        flag, equals, value = arg.partition("=")
        if equals and flag in secret_flags:
            found.append(value)
    return found
