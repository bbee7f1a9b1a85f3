"""The `backup-pipelines` command: list, verify, drill, restore and prune without Dagster.

On the worst day Dagster may be down with everything else; this command
needs only the `BACKUP_*` environment (and the targets file, when there is
one) and the store. Its sources (kinds, or `<kind>.<target>`) and each
one's restore flags come from the configuration and the registry. Exit
codes: 0 success, 1 failure, 2 usage or configuration error; errors are one
line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

from backup_pipelines.audit import AuditLog, Entry
from backup_pipelines.drill import drill
from backup_pipelines.errors import BackupError, ConfigurationError, SnapshotNotFound
from backup_pipelines.redaction import redact, secret_parts
from backup_pipelines.restore import restore
from backup_pipelines.retention import RetentionRules, as_listing, prune
from backup_pipelines.runtime import Runtime, Settings, load_settings
from backup_pipelines.snapshot.manifest import format_utc, utc_now
from backup_pipelines.snapshot.reader import verify_snapshot
from backup_pipelines.snapshot.store import LATEST, StoredSnapshot, Unreadable
from backup_pipelines.snapshot.streams import human_bytes
from backup_pipelines.sources.registry import SOURCES
from backup_pipelines.sources.source import SECRET_OPTION, RestoreOptions, Source
from backup_pipelines.wal_commands import WAL_COMMANDS, add_wal_commands
from backup_pipelines.wal_commands import run as run_wal_command

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
logger = logging.getLogger("backup_pipelines.cli")


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


SNAPSHOT_SHOWN = 80
"""Of a snapshot argument as typed, what an audit record keeps (an id has 25 characters)."""
SNAPSHOT_HELP = (
    "a snapshot id (YYYYMMDDTHHMMSSZ-xxxxxxxx, see `snapshots`), or latest (the default)"
)


def add_snapshot_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--snapshot", default=LATEST, metavar="ID|latest", help=SNAPSHOT_HELP)


def _parser(sources: Mapping[str, type[Source]] | None = None) -> argparse.ArgumentParser:
    """The command for `sources` (each source's name and its kind): the configured ones, or
    the kinds themselves when the configuration could not be read (so `--help` still works)."""
    if sources is None:
        sources = {source.kind: source for source in SOURCES}
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

    verify = commands.add_parser("verify", help="re-read snapshots and check them")
    verify.add_argument(
        "source", nargs="?", choices=groups, help=f"{group_help}; without it, every source"
    )
    add_snapshot_flag(verify)
    verify.add_argument("--deep", action="store_true", help="also prove it restorable")

    drill_ = commands.add_parser(
        "drill", help="restore a snapshot into a scratch target and compare it with its manifest"
    )
    drill_.add_argument("source", choices=names, help=source_help)
    add_snapshot_flag(drill_)
    drill_.add_argument("--json", action="store_true", help="print what the drill proved as JSON")

    restore_ = commands.add_parser("restore", help="restore a snapshot into a target")
    targets = restore_.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, kind in sources.items():
        target = targets.add_parser(name, help=f"restore a {name} snapshot")
        add_snapshot_flag(target)
        add_restore_flags(target, kind.restore_options)

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

    add_wal_commands(commands)

    prune_ = commands.add_parser("prune", help="delete snapshots the retention rules drop")
    prune_.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    prune_.add_argument(
        "--json", action="store_true", help='print {"keep": [...], "delete": [...]}'
    )
    return parser


def _listing(snapshot: StoredSnapshot) -> dict:
    until = snapshot.locked_until
    return {
        **snapshot.manifest.model_dump(mode="json"),
        "location": snapshot.location,
        "locked_until": format_utc(until) if until else None,
    }


def report_unreadable(unreadable: Sequence[Unreadable]) -> None:
    """Say on stderr which locations hold a manifest that is not a valid snapshot's."""
    for found in unreadable:
        print(
            f"warning: {found.location}: {found.reason}; not a snapshot (prune removes it "
            "once it is a day old)",
            file=sys.stderr,
        )


def cmd_snapshots(args: argparse.Namespace, runtime: Runtime) -> int:
    store = runtime.store
    surveys = [store.survey(source) for source in selected(runtime, args.source)]
    found = [snapshot for survey in surveys for snapshot in survey.snapshots]
    snapshots = sorted(found, key=lambda s: s.manifest.started_at, reverse=True)
    report_unreadable([item for survey in surveys for item in survey.unreadable])
    if args.json:
        print(json.dumps([_listing(snapshot) for snapshot in snapshots], indent=2))
        return EXIT_OK
    width = max((len(snapshot.source) for snapshot in snapshots), default=0)
    for snapshot in snapshots:
        manifest = snapshot.manifest
        print(
            f"{manifest.source:<{max(width, 10)}} {manifest.snapshot_id:<26} "
            f"{human_bytes(manifest.size_bytes):>10}  {len(manifest.files):>3} files  "
            f"{snapshot.location}"
        )
    if not snapshots:
        print(f"no complete snapshots in {store.describe()}", file=sys.stderr)
    return EXIT_OK


def report_unreadable_for_latest(runtime: Runtime, source: str, snapshot_id: str) -> None:
    """`latest` passes over unreadable manifests: say which, so none goes unnoticed."""
    if snapshot_id == LATEST:
        report_unreadable(runtime.store.survey(source).unreadable)


def selected(runtime: Runtime, word: str | None) -> list[str]:
    """The sources a command's word names: one source, every target of a kind, or (no word)
    every source."""
    sources = runtime.sources.values()
    return [s.name for s in sources if word is None or word in (s.name, s.kind)]


def cmd_verify(args: argparse.Namespace, runtime: Runtime, noted: Entry) -> int:
    if args.source in runtime.sources:
        return verify_one(runtime, args.source, args.snapshot, args.deep, noted)
    if args.snapshot != LATEST:
        raise ConfigurationError("--snapshot names one snapshot: give its source too")
    outcomes = []
    for source in selected(runtime, args.source):
        try:
            outcomes.append(verify_one(runtime, source, LATEST, args.deep, noted))
        except SnapshotNotFound as exc:
            print(f"{source}: {exc}", file=sys.stderr)
    return max(outcomes, default=EXIT_OK)


def verify_one(runtime: Runtime, source: str, snapshot_id: str, deep: bool, noted: Entry) -> int:
    report_unreadable_for_latest(runtime, source, snapshot_id)
    snapshot = runtime.store.find(source, snapshot_id)
    where = f"{snapshot.source}/{snapshot.snapshot_id}"
    noted.snapshots.append(where)
    noted.detail = "deep" if deep else None
    problems = verify_snapshot(runtime.store, snapshot)
    if deep and not problems:
        problems = runtime.sources[source].deep_verify(runtime.reader(snapshot, "verify"))
    if problems:
        noted.failed(f"{where}: {'; '.join(problems)}")
        for problem in problems:
            print(f"{where}: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    depth = "deep-verified" if deep else "verified"
    print(
        f"{where}: {depth}, {len(snapshot.manifest.files)} files, "
        f"{human_bytes(snapshot.manifest.size_bytes)}"
    )
    return EXIT_OK


def cmd_drill(args: argparse.Namespace, runtime: Runtime, noted: Entry) -> int:
    report_unreadable_for_latest(runtime, args.source, args.snapshot)
    drilled = drill(runtime, args.source, args.snapshot, logger.info)
    where = f"{drilled.snapshot.source}/{drilled.snapshot.snapshot_id}"
    noted.snapshots.append(where)
    if args.json:
        print(json.dumps(drilled.report(), indent=2, default=str))
    for warning in drilled.result.warnings:
        print(f"{where}: warning: {warning}", file=sys.stderr)
    for problem in drilled.result.problems:
        print(f"{where}: {problem}", file=sys.stderr)
    if not drilled.result.passed:
        noted.failed("; ".join(drilled.result.problems))
        return EXIT_FAILURE
    if not args.json:
        print(f"{where}: drilled in {drilled.duration_s:.1f} s, restores equal to its manifest")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace, runtime: Runtime, noted: Entry) -> int:
    model = runtime.sources[args.source].restore_options
    flags = {name: model.flag(name) for name in model.model_fields}
    given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    options = model.parse(given, spelled=lambda name: flags.get(name, name))
    noted.target = options.destination()
    noted.snapshots.append(f"{args.source}/{args.snapshot[:SNAPSHOT_SHOWN]}")
    report_unreadable_for_latest(runtime, args.source, args.snapshot)
    restored = restore(runtime, args.source, args.snapshot, options, logger.info)
    noted.snapshots[-1] = f"{args.source}/{restored.snapshot.snapshot_id}"
    print(restored.summary)
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, runtime: Runtime, noted: Entry) -> int:
    noted.detail = "dry run" if args.dry_run else None
    reports = prune(
        runtime.store,
        runtime.sources,
        RetentionRules.from_settings(runtime.shared),
        dry_run=args.dry_run,
        now=utc_now(),
        staging_dir=runtime.staging.directory,
        log=logger.info,
        warn=logger.warning,
    )
    listing = as_listing(reports)
    noted.snapshots = listing["delete"]
    if args.json:
        print(json.dumps(listing, indent=2))
    else:
        for verdict in ("keep", "delete"):
            for name in listing[verdict]:
                print(f"{verdict:<7}{name}")
        for locked in listing["locked"]:
            print(f"locked {locked['snapshot']} (S3 Object Lock until {locked['retain_until']})")
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace, runtime: Runtime) -> int:
    from backup_pipelines.metrics import registry_for, serve, write_textfile

    registry = registry_for(runtime)
    if args.textfile:
        write_textfile(registry, args.textfile)
        return EXIT_OK
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"--listen {args.listen!r} is not HOST:PORT")
    logger.info("serving metrics on http://%s:%s/metrics", host, port)
    try:
        serve(registry, host.strip("[]"), int(port))
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {args.listen}: {exc.strerror}") from None
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_audit(args: argparse.Namespace, runtime: Runtime) -> int:
    records = runtime.audit.records(source=args.source, since=args.since)
    if args.json:
        print(json.dumps([record.model_dump(mode="json") for record in records], indent=2))
        return EXIT_OK
    for record in records:
        where = ", ".join(record.snapshots[:3]) + (" …" if len(record.snapshots) > 3 else "")
        into = f" into {record.target}" if record.target else ""
        print(
            f"{record.model_dump(mode='json')['at']}  {record.operation:<8} {record.outcome:<9} "
            f"{record.source or '-':<12} {where or '-'}{into}  by {record.user}@{record.host} "
            f"via {record.via}" + (f": {record.error}" if record.error else "")
        )
    return EXIT_OK


def since_time(text: str) -> datetime:
    """`--since`: an ISO-8601 date or time; without a zone, UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO-8601 date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


READING = {"snapshots": cmd_snapshots, "metrics": cmd_metrics, "audit": cmd_audit}
"""Commands that only read: their output is the record."""
AUDITED = {"verify": cmd_verify, "drill": cmd_drill, "restore": cmd_restore, "prune": cmd_prune}
"""Commands that read or change backups or their targets: each leaves one audit record."""


def run(args: argparse.Namespace, runtime: Runtime, secrets: Sequence[str]) -> int:
    """The command, and for one that touches backups its audit record, in which `secrets`
    (the configured ones and those typed on the command line) are masked."""
    if args.command in READING:
        return READING[args.command](args, runtime)
    if args.command in WAL_COMMANDS:  # `command.py` sends them to their module directly
        return run_wal_command(args)
    source = getattr(args, "source", None)
    audit = AuditLog(runtime.store, secrets)
    with audit.operation(args.command, via="command", source=source) as noted:
        code = AUDITED[args.command](args, runtime, noted)
        if code != EXIT_OK and noted.outcome == "succeeded":
            noted.failed(f"exit code {code}")
    return code


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


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    argv = list(sys.argv[1:] if argv is None else argv)
    secrets = command_line_secrets(argv)
    settings: Settings | ConfigurationError
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        settings = exc  # said after parsing, so `--help` and usage errors still answer
    args = _parser(settings.kinds if isinstance(settings, Settings) else None).parse_args(argv)
    if getattr(args, "json", False):  # JSON for a program to read: no advice around it
        logging.getLogger("backup_pipelines.storage.configured").setLevel(logging.ERROR)
    try:
        if isinstance(settings, ConfigurationError):
            raise settings
        secrets += settings.secret_values()
        return run(args, Runtime(settings), secrets)
    except ConfigurationError as exc:
        print(f"error: {_said(exc, args, settings, secrets)}", file=sys.stderr)
        return EXIT_USAGE
    except BackupError as exc:
        print(f"error: {_said(exc, args, settings, secrets)}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # one line, never a traceback with a secret in it
        print(f"error: {type(exc).__name__}: {redact(str(exc), secrets)}", file=sys.stderr)
        return EXIT_FAILURE


def _said(
    exc: BackupError,
    args: argparse.Namespace,
    settings: Settings | ConfigurationError,
    secrets: list[str],
) -> str:
    """The error as the operator reads it: secrets masked, and the settings of the source
    the command is about named where that source sets them (a target's file key)."""
    text = redact(str(exc), secrets)
    if isinstance(settings, Settings):
        named = {source.name: source for source in settings.declared}
        if (source := named.get(getattr(args, "source", None) or "")) is not None:
            text = source.in_own_terms(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
