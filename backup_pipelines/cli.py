"""The `backup-pipelines` command: list, verify, drill, restore and prune without Dagster.

On the worst day Dagster may be down with everything else; this command
needs only the `BACKUP_*` environment and the store. Its sources, and each
source's restore flags, come from the registry. Exit codes: 0 success, 1
failure, 2 usage or configuration error; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from pydantic.fields import FieldInfo

from backup_pipelines.drill import drill
from backup_pipelines.errors import BackupError, ConfigurationError
from backup_pipelines.redaction import redact
from backup_pipelines.restore import restore
from backup_pipelines.retention import RetentionRules, as_listing, prune
from backup_pipelines.runtime import Runtime, load_settings
from backup_pipelines.snapshot.manifest import utc_now
from backup_pipelines.snapshot.reader import verify_snapshot
from backup_pipelines.snapshot.store import LATEST, StoredSnapshot, Unreadable
from backup_pipelines.snapshot.streams import human_bytes
from backup_pipelines.sources.registry import SOURCE_NAMES, SOURCES, source_class
from backup_pipelines.sources.source import RestoreOptions

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
logger = logging.getLogger("backup_pipelines.cli")


def option_flag(name: str, info: FieldInfo) -> str:
    """A restore option's flag: its own (`--target-dsn`) or `--<field-name>`."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return str(extra.get("flag") or f"--{name.replace('_', '-')}")


def add_restore_flags(parser: argparse.ArgumentParser, options: type[RestoreOptions]) -> None:
    """One flag per field of the source's restore options; the description is its help."""
    for name, info in options.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if info.annotation is bool:
            parser.add_argument(
                option_flag(name, info), dest=name, action="store_true", help=info.description
            )
            continue
        parser.add_argument(
            option_flag(name, info),
            dest=name,
            required=info.is_required(),
            metavar=extra.get("metavar") or name.upper(),
            help=info.description,
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backup-pipelines",
        description="List, verify, restore and prune backup snapshots (works without Dagster).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    snapshots = commands.add_parser("snapshots", help="list complete snapshots, newest first")
    snapshots.add_argument("source", nargs="?", choices=SOURCE_NAMES)
    snapshots.add_argument("--json", action="store_true", help="print manifests as JSON")

    verify = commands.add_parser("verify", help="re-read a snapshot and check it")
    verify.add_argument("source", choices=SOURCE_NAMES)
    verify.add_argument("--snapshot", default=LATEST, metavar="ID|latest")
    verify.add_argument("--deep", action="store_true", help="also prove it restorable")

    drill_ = commands.add_parser(
        "drill", help="restore a snapshot into a scratch target and compare it with its manifest"
    )
    drill_.add_argument("source", choices=SOURCE_NAMES)
    drill_.add_argument("--snapshot", default=LATEST, metavar="ID|latest")
    drill_.add_argument("--json", action="store_true", help="print what the drill proved as JSON")

    restore_ = commands.add_parser("restore", help="restore a snapshot into a target")
    targets = restore_.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for source in SOURCES:
        target = targets.add_parser(source.name, help=f"restore a {source.name} snapshot")
        target.add_argument("--snapshot", default=LATEST, metavar="ID|latest")
        add_restore_flags(target, source.restore_options)

    prune_ = commands.add_parser("prune", help="delete snapshots the retention rules drop")
    prune_.add_argument("--dry-run", action="store_true")
    prune_.add_argument("--json", action="store_true")
    return parser


def _listing(snapshot: StoredSnapshot) -> dict:
    return {**snapshot.manifest.model_dump(mode="json"), "location": snapshot.location}


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
    surveys = [
        store.survey(source) for source in ([args.source] if args.source else runtime.sources)
    ]
    found = [snapshot for survey in surveys for snapshot in survey.snapshots]
    snapshots = sorted(found, key=lambda s: s.manifest.started_at, reverse=True)
    report_unreadable([item for survey in surveys for item in survey.unreadable])
    if args.json:
        print(json.dumps([_listing(snapshot) for snapshot in snapshots], indent=2))
        return EXIT_OK
    for snapshot in snapshots:
        manifest = snapshot.manifest
        print(
            f"{manifest.source:<10} {manifest.snapshot_id:<26} "
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


def cmd_verify(args: argparse.Namespace, runtime: Runtime) -> int:
    report_unreadable_for_latest(runtime, args.source, args.snapshot)
    snapshot = runtime.store.find(args.source, args.snapshot)
    problems = verify_snapshot(runtime.store, snapshot)
    if args.deep and not problems:
        reader = runtime.reader(snapshot, "verify")
        problems = runtime.sources[args.source].deep_verify(reader)
    where = f"{snapshot.source}/{snapshot.snapshot_id}"
    if problems:
        for problem in problems:
            print(f"{where}: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    depth = "deep-verified" if args.deep else "verified"
    print(
        f"{where}: {depth}, {len(snapshot.manifest.files)} files, "
        f"{human_bytes(snapshot.manifest.size_bytes)}"
    )
    return EXIT_OK


def cmd_drill(args: argparse.Namespace, runtime: Runtime) -> int:
    report_unreadable_for_latest(runtime, args.source, args.snapshot)
    drilled = drill(runtime, args.source, args.snapshot, logger.info)
    where = f"{drilled.snapshot.source}/{drilled.snapshot.snapshot_id}"
    if args.json:
        print(json.dumps(drilled.report(), indent=2, default=str))
    for warning in drilled.result.warnings:
        print(f"{where}: warning: {warning}", file=sys.stderr)
    for problem in drilled.result.problems:
        print(f"{where}: {problem}", file=sys.stderr)
    if not drilled.result.passed:
        return EXIT_FAILURE
    if not args.json:
        print(f"{where}: drilled in {drilled.duration_s:.1f} s, restores equal to its manifest")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace, runtime: Runtime) -> int:
    model = source_class(args.source).restore_options
    flags = {name: option_flag(name, info) for name, info in model.model_fields.items()}
    given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    options = model.parse(given, spelled=lambda name: flags.get(name, name))
    report_unreadable_for_latest(runtime, args.source, args.snapshot)
    print(restore(runtime, args.source, args.snapshot, options, logger.info).summary)
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, runtime: Runtime) -> int:
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
    if args.json:
        print(json.dumps(listing, indent=2))
    else:
        for verdict in ("keep", "delete"):
            for name in listing[verdict]:
                print(f"{verdict:<7}{name}")
    return EXIT_OK


COMMANDS = {
    "snapshots": cmd_snapshots,
    "verify": cmd_verify,
    "drill": cmd_drill,
    "restore": cmd_restore,
    "prune": cmd_prune,
}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)
    settings = None
    try:
        settings = load_settings()
        return COMMANDS[args.command](args, Runtime(settings))
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # one line, never a traceback with a secret in it
        secrets = settings.secret_values() if settings else []
        print(f"error: {type(exc).__name__}: {redact(str(exc), secrets)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
