"""The command's subcommands: each turns its arguments into an operation (`operations/`) and
the operation's outcome into lines and an exit code.

On the worst day Dagster may be down with everything else; these need only
the `BACKUP_*` environment (and the targets file, when there is one) and
the store. An operation run from here has the same effects as from Dagster
(its audit record, its events). Exit codes: 0 success, 1 failure, 2 usage or
configuration error; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from backup_pipelines.cli import WAL_COMMANDS, wal
from backup_pipelines.cli.parser import build_parser, command_line_secrets
from backup_pipelines.errors import BackupError, ConfigurationError, SnapshotNotFound
from backup_pipelines.operations.caller import Caller
from backup_pipelines.operations.copy import copy
from backup_pipelines.operations.drill import drill
from backup_pipelines.operations.prune import Pruned, prune
from backup_pipelines.operations.recover import Recovery, plan_recovery, recover
from backup_pipelines.operations.restore import holding_store, restore
from backup_pipelines.operations.status import standings
from backup_pipelines.operations.verify import verify
from backup_pipelines.recovery_targets import read_into_file
from backup_pipelines.redaction import redact
from backup_pipelines.runtime import Runtime, Settings, load_settings
from backup_pipelines.snapshot.manifest import format_utc, utc_now
from backup_pipelines.snapshot.store import LATEST, StoredSnapshot, Unreadable
from backup_pipelines.storage.streams import human_bytes
from backup_pipelines.stores import PRIMARY

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
logger = logging.getLogger(__name__)


def warn(line: str) -> None:
    print(line, file=sys.stderr)


COMMAND = Caller("command", run_id=None, log=logger.info, warn=warn)
"""The operations' caller: progress through `logging` (on stderr), warnings on stderr."""


def _listing(snapshot: StoredSnapshot) -> dict:
    until = snapshot.locked_until
    return {
        **snapshot.manifest.model_dump(mode="json"),
        "location": snapshot.location,
        "locked_until": format_utc(until) if until else None,
        "rewritten": snapshot.rewritten,
    }


def report_unreadable(unreadable: Sequence[Unreadable]) -> None:
    """Say on stderr which locations hold a manifest that is not a valid snapshot's."""
    for found in unreadable:
        print(
            f"warning: {found.location}: {found.reason}; not a snapshot (prune removes it "
            "once it is a day old)",
            file=sys.stderr,
        )


def report_ahead(ahead: Sequence[tuple[StoredSnapshot, str]]) -> None:
    """Say on stderr which snapshots lie ahead of the clocks (and are therefore not used)."""
    for snapshot, reason in ahead:
        print(
            f"warning: {snapshot.location}: {reason} (a clock far ahead, or a planted "
            "snapshot): never latest, not counted by retention or monitoring; restore it "
            "only by its id, if you trust it",
            file=sys.stderr,
        )


def report_unreadable_for_latest(runtime: Runtime, source: str, snapshot_id: str) -> None:
    """`latest` passes over unreadable manifests and snapshots ahead of the clocks: say which,
    so none goes unnoticed."""
    if snapshot_id == LATEST:
        survey = runtime.store.survey(source)
        report_unreadable(survey.unreadable)
        report_ahead(survey.ahead)


def selected(runtime: Runtime, word: str | None) -> list[str]:
    """The sources a command's word names: one source, every target of a kind, or (no word)
    every source."""
    sources = runtime.sources.values()
    return [s.name for s in sources if word is None or word in (s.name, s.kind)]


def cmd_snapshots(args: argparse.Namespace, runtime: Runtime) -> int:
    store = runtime.store
    surveys = [store.survey(source) for source in selected(runtime, args.source)]
    found = [snapshot for survey in surveys for snapshot in survey.snapshots]
    snapshots = sorted(found, key=lambda s: s.manifest.started_at, reverse=True)
    report_unreadable([item for survey in surveys for item in survey.unreadable])
    report_ahead([item for survey in surveys for item in survey.ahead])
    for snapshot in (s for s in snapshots if s.rewritten):
        print(f"warning: {snapshot.rewritten}", file=sys.stderr)
    if args.json:
        print(json.dumps([_listing(snapshot) for snapshot in snapshots], indent=2))
        return EXIT_OK
    if not snapshots:
        print(f"no complete snapshots in {store.describe()}", file=sys.stderr)
        return EXIT_OK
    width = max(10, *(len(snapshot.source) for snapshot in snapshots))
    print(f"{'SOURCE':<{width}} {'SNAPSHOT':<26} {'SIZE':>10}  {'FILES':>5}  LOCATION")
    for snapshot in snapshots:
        manifest = snapshot.manifest
        print(
            f"{manifest.source:<{width}} {manifest.snapshot_id:<26} "
            f"{human_bytes(manifest.size_bytes):>10}  {len(manifest.files):>5}  "
            f"{snapshot.location}"
        )
    total = sum(snapshot.manifest.size_bytes for snapshot in snapshots)
    counted = f"{len(snapshots)} snapshot{'s' if len(snapshots) > 1 else ''}"
    print(f"{counted}, {human_bytes(total)}, in {store.describe()}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, runtime: Runtime) -> int:
    """One line per source backed up (or named): exit 1 when one failed since its last good
    snapshot, or has none."""
    names = selected(runtime, args.source)
    shown = [name for name in names if runtime.sources[name].enabled or args.source]
    found_standings = standings(runtime, shown)
    if args.json:
        print(json.dumps([found.report() for found in found_standings], indent=2))
    else:
        now = utc_now()
        width = max((len(found.source) for found in found_standings), default=10)
        for found in found_standings:
            print(f"{found.source:<{width}}  {found.summary(now)}")
    return EXIT_OK if all(found.healthy for found in found_standings) else EXIT_FAILURE


def cmd_verify(args: argparse.Namespace, runtime: Runtime) -> int:
    """Every snapshot named, and the store's privacy: one open to other local users fails."""
    opened = runtime.openness()
    for reason in opened:
        print(f"error: {reason}", file=sys.stderr)
    return max(verify_named(args, runtime), EXIT_FAILURE if opened else EXIT_OK)


def verify_named(args: argparse.Namespace, runtime: Runtime) -> int:
    """One source (its latest snapshot must be there), or every source of a kind or of all."""
    if selected(runtime, args.source) == [args.source]:
        return verify_one(runtime, args.source, args.snapshot, args.deep)
    if args.snapshot != LATEST:
        raise ConfigurationError("--snapshot names one snapshot: give its source too")
    outcomes = []
    for source in selected(runtime, args.source):
        try:
            outcomes.append(verify_one(runtime, source, LATEST, args.deep))
        except SnapshotNotFound as exc:
            if runtime.sources[source].enabled:  # one turned off may never have had any
                print(f"{source}: {exc}", file=sys.stderr)
    return max(outcomes, default=EXIT_OK)


def verify_one(runtime: Runtime, source: str, snapshot_id: str, deep: bool) -> int:
    report_unreadable_for_latest(runtime, source, snapshot_id)
    verified = verify(runtime, COMMAND, source, snapshot_id, deep=deep)
    if verified.problems:
        for problem in verified.problems:
            print(f"{verified.where}: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    manifest = verified.snapshot.manifest
    depth = "deep-verified" if deep else "verified"
    files = len(manifest.files)
    print(
        f"{verified.where}: {depth}, {files} file{'s' if files > 1 else ''}, "
        f"{human_bytes(manifest.size_bytes)}"
    )
    return EXIT_OK


def cmd_drill(args: argparse.Namespace, runtime: Runtime) -> int:
    report_unreadable_for_latest(runtime, args.source, args.snapshot)
    drilled = drill(runtime, COMMAND, args.source, args.snapshot)
    if args.json:
        print(json.dumps(drilled.report(), indent=2, default=str))
    for problem in drilled.result.problems:
        print(f"{drilled.where}: {problem}", file=sys.stderr)
    if not drilled.result.passed:
        return EXIT_FAILURE
    if not args.json:
        print(
            f"{drilled.where}: drilled in {drilled.duration_s:.1f} s, restores equal to its "
            "manifest"
        )
    return EXIT_OK


def cmd_restore(args: argparse.Namespace, runtime: Runtime) -> int:
    model = runtime.sources[args.source].restore_options
    flags = {name: model.flag(name) for name in model.model_fields}
    given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    if not args.store:  # the primary, or the first copy holding it when it is unreachable
        runtime = holding_store(runtime, COMMAND, args.source, args.snapshot)
    report_unreadable_for_latest(runtime, args.source, args.snapshot)
    spelled = lambda name: flags.get(name, name)  # noqa: E731
    restored = restore(runtime, COMMAND, args.source, args.snapshot, given, spelled)
    print(restored.summary)
    return EXIT_OK


def cmd_recover(args: argparse.Namespace, runtime: Runtime) -> int:
    """The plan, or the recovery: exit 0 when every source named has a usable snapshot (with
    `--plan`) or was restored; the report names the source that stopped it."""
    targets = read_into_file(args.into, runtime.sources, os.environ)
    runtime = Runtime(runtime.settings, [*runtime.typed_secrets, *targets.secrets])
    recovery = plan_recovery(runtime, COMMAND, args.at, targets.options, args.store)
    if not args.plan:
        recover(runtime, COMMAND, recovery)
    if args.json:
        print(json.dumps({**recovery.report(), "plan": args.plan}, indent=2))
    else:
        print_recovery(recovery, args.plan)
    if stopped := recovery.failed:
        state = "unusable" if stopped.outcome == "unusable" else "failed"
        untouched = [step.source for step in recovery.due if step.outcome == "not started"]
        later = f"; not restored: {', '.join(untouched)}" if untouched else ""
        print(f"error: {stopped.source} {state}: {stopped.reason}{later}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def print_recovery(recovery: Recovery, planned: bool) -> None:
    """One line per source: its snapshot and recovery point, how far before the moment, its
    size, and the time its restore took (or should take); then what each restore did (or,
    planned, how and where it would restore)."""
    print(f"{'plan of the recovery' if planned else 'recovery'} to {format_utc(recovery.at)}")
    width = max(10, *(len(step.source) for step in recovery.steps))
    print(
        f"{'SOURCE':<{width}} {'OUTCOME':<11} {'SNAPSHOT':<26} {'RECOVERY POINT':<20} "
        f"{'BEFORE':>7} {'SIZE':>10}  TIME"
    )
    for step in recovery.steps:
        shown = step.shown(recovery.at)
        if shown is None:
            print(f"{step.source:<{width}} {step.outcome:<11} {step.reason or ''}")
            continue
        print(
            f"{step.source:<{width}} {step.outcome:<11} {shown.snapshot:<26} {shown.point:<20} "
            f"{shown.before:>7} {shown.size:>10}  {shown.time}"
        )
    for step in recovery.steps:
        if step.summary:
            print(f"{step.source}: {step.summary}")
        elif planned and step.point is not None:
            print(f"{step.source}: {step.point.how}, into {step.destination}")


def cmd_prune(args: argparse.Namespace, runtime: Runtime) -> int:
    first, *copies = prune(runtime, COMMAND, dry_run=args.dry_run, store=args.store)
    if args.json:
        listing = first.listing()
        if copies:
            listing["stores"] = {pruned.store: pruned.listing() for pruned in copies}
        print(json.dumps(listing, indent=2))
    else:
        for pruned in (first, *copies):
            _print_pruned(pruned, prefix=f"{pruned.store}: " if pruned is not first else "")
    return EXIT_FAILURE if any(pruned.error for pruned in (first, *copies)) else EXIT_OK


def _print_pruned(pruned: Pruned, prefix: str) -> None:
    listing = pruned.listing()
    for verdict in ("keep", "delete"):
        for name in listing[verdict]:
            print(f"{prefix}{verdict:<7}{name}")
    for locked in listing["locked"]:
        print(
            f"{prefix}locked {locked['snapshot']} (S3 Object Lock until {locked['retain_until']})"
        )
    if pruned.error:
        print(f"error: {prefix}{pruned.error}", file=sys.stderr)


def cmd_copy(args: argparse.Namespace, runtime: Runtime) -> int:
    if len(runtime.stores) == 1:
        print("no copy store is configured (BACKUP_STORES_FILE): nothing to copy", file=sys.stderr)
        return EXIT_OK
    copies = copy(runtime, COMMAND, source=args.source, store=args.store)
    if args.json:
        print(json.dumps({"stores": [done.report() for done in copies]}, indent=2))
    else:
        for done in copies:
            state = "up to date" if done.complete else f"{done.report()['behind']} behind"
            copied = sum(len(s.copied) for s in done.sources)
            print(f"{done.store:<12} {state}, {copied} snapshots copied  {done.location}")
            for problem in [done.error, *(p for s in done.sources for p in s.problems)]:
                if problem:
                    print(f"{done.store}: {problem}", file=sys.stderr)
    return EXIT_OK if all(done.complete for done in copies) else EXIT_FAILURE


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


COMMANDS = {
    "snapshots": cmd_snapshots,
    "status": cmd_status,
    "copy": cmd_copy,
    "verify": cmd_verify,
    "drill": cmd_drill,
    "restore": cmd_restore,
    "recover": cmd_recover,
    "prune": cmd_prune,
    "metrics": cmd_metrics,
    "audit": cmd_audit,
}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("pika").setLevel(logging.WARNING)  # its connection chatter is not ours
    argv = list(sys.argv[1:] if argv is None else argv)
    typed = command_line_secrets(argv)
    settings: Settings | ConfigurationError
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        settings = exc  # said after parsing, so `--help` and usage errors still answer
    if isinstance(settings, Settings):
        parser = build_parser(settings.kinds, [spec.name for spec in settings.stores])
    else:
        parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in WAL_COMMANDS:  # `cli/__init__.py` sends them there directly
        return wal.run(args)
    # The local store is named where it matters (`snapshots`' totals, every "no snapshot"),
    # not warned about before every command's own output.
    logging.getLogger("backup_pipelines.stores").setLevel(logging.ERROR)
    secrets = typed + (settings.secret_values() if isinstance(settings, Settings) else [])
    try:
        if isinstance(settings, ConfigurationError):
            raise settings
        reading = PRIMARY if args.command == "copy" else getattr(args, "store", None) or PRIMARY
        return COMMANDS[args.command](args, Runtime(settings, typed, reading))
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
