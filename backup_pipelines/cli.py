"""The `backup-pipelines` command: list, verify, restore and prune without Dagster.

On the worst day Dagster may be down with everything else; this command
needs only the `BACKUP_*` environment and the store. Exit codes: 0 success,
1 failure, 2 usage or configuration error; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from backup_pipelines.errors import BackupError, ConfigurationError
from backup_pipelines.redaction import redact
from backup_pipelines.retention import RetentionRules, as_listing, prune
from backup_pipelines.settings import SOURCES, BackupSettings, load_settings
from backup_pipelines.snapshot import store_from_settings
from backup_pipelines.snapshot.encryption import identities_for
from backup_pipelines.snapshot.manifest import utc_now
from backup_pipelines.snapshot.reader import verify_snapshot
from backup_pipelines.snapshot.store import LATEST, SnapshotStore, StoredSnapshot, Unreadable
from backup_pipelines.snapshot.streams import human_bytes
from backup_pipelines.sources import RestoreRequest, registered_sources
from backup_pipelines.sources.documents.backup import repository_from_settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
logger = logging.getLogger("backup_pipelines.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backup-pipelines",
        description="List, verify, restore and prune backup snapshots (works without Dagster).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    snapshots = commands.add_parser("snapshots", help="list complete snapshots, newest first")
    snapshots.add_argument("source", nargs="?", choices=SOURCES)
    snapshots.add_argument("--json", action="store_true", help="print manifests as JSON")

    verify = commands.add_parser("verify", help="re-read a snapshot and check it")
    verify.add_argument("source", choices=SOURCES)
    verify.add_argument("--snapshot", default=LATEST, metavar="ID|latest")
    verify.add_argument("--deep", action="store_true", help="also prove it restorable")

    restore = commands.add_parser("restore", help="restore a snapshot into a target")
    targets = restore.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, source in registered_sources().items():
        target = targets.add_parser(name, help=f"restore a {name} snapshot")
        target.add_argument("--snapshot", default=LATEST, metavar="ID|latest")
        target.add_argument("--force", action="store_true", help="overwrite a non-empty target")
        source.add_restore_arguments(target)

    prune = commands.add_parser("prune", help="delete snapshots the retention rules drop")
    prune.add_argument("--dry-run", action="store_true")
    prune.add_argument("--json", action="store_true")
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


def cmd_snapshots(args: argparse.Namespace, store: SnapshotStore, _: BackupSettings) -> int:
    sources = [args.source] if args.source else list(SOURCES)
    surveys = [store.survey(source) for source in sources]
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


def cmd_verify(args: argparse.Namespace, store: SnapshotStore, settings: BackupSettings) -> int:
    if args.snapshot == LATEST:
        report_unreadable(store.survey(args.source).unreadable)
    snapshot = store.find(args.source, args.snapshot)
    problems = verify_snapshot(store, snapshot)
    if args.deep and not problems:
        source = registered_sources().get(args.source)
        if source is None:
            raise ConfigurationError(f"--deep is not available for {args.source} yet")
        identities = identities_for(snapshot.manifest.encryption, settings.age_identity_file)
        problems = source.deep_verify(store, snapshot, identities, settings.staging_dir / "verify")
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


COMMON_RESTORE_ARGUMENTS = {"command", "source", "snapshot", "target", "force"}


def cmd_restore(args: argparse.Namespace, store: SnapshotStore, settings: BackupSettings) -> int:
    options = {k: v for k, v in vars(args).items() if k not in COMMON_RESTORE_ARGUMENTS}
    if args.snapshot == LATEST:
        report_unreadable(store.survey(args.source).unreadable)
    snapshot = store.find(args.source, args.snapshot)
    request = RestoreRequest(
        snapshot=snapshot,
        target=args.target,
        force=args.force,
        work_dir=settings.staging_dir / "restore",
        identities=identities_for(snapshot.manifest.encryption, settings.age_identity_file),
        options=options,
        log=logger.info,
    )
    print(registered_sources()[args.source].restore(request, store))
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, store: SnapshotStore, settings: BackupSettings) -> int:
    forget = repository_from_settings(settings).forget if settings.restic_password else None
    reports = prune(
        store,
        RetentionRules.from_settings(settings),
        dry_run=args.dry_run,
        now=utc_now(),
        staging_dir=settings.staging_dir,
        forget_documents=forget,
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
    "restore": cmd_restore,
    "prune": cmd_prune,
}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = _parser().parse_args(argv)
    settings = None
    try:
        settings = load_settings()
        store = store_from_settings(settings)
        return COMMANDS[args.command](args, store, settings)
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
