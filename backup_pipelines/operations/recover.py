"""Whole-system recovery: every source named in the into file back to one moment, in the
runbook's order (the registry's: the databases first, the file tree last).

On the worst day five systems come back from snapshots taken at five
different times; restored by hand, in the wrong order or from the wrong
snapshot, they do not fit together. So the recovery is planned first, as a
whole: for each source the newest snapshot complete at the moment (or,
for a source that archives between snapshots, a snapshot and its archive
replayed to exactly the moment, as far as the archive reaches), how far
before the moment it lies, its size and how long its restore should take.
A source named without a usable snapshot stops the recovery before any
target changes. Then each source is restored as `restore` restores it
(the snapshot proven before its target changes, `backup.restored`, its
own audit record); the first failure stops the recovery and leaves the
later targets untouched. One more audit record tells the recovery as a
whole.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from backup_pipelines.errors import BackupError, ConfigurationError
from backup_pipelines.events.messages import short_error
from backup_pipelines.operations.caller import Caller
from backup_pipelines.operations.restore import holding_store, restore
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.manifest import format_utc, utc_now
from backup_pipelines.snapshot.store import CLOCK_SLACK, LATEST
from backup_pipelines.sources.source import RecoveryPoint, Source
from backup_pipelines.storage.streams import human_bytes, human_span

Outcome = Literal["planned", "unusable", "skipped", "restored", "failed", "not started"]


@dataclass(frozen=True)
class Shown:
    """A step's figures in words, for the command's table and the UI's."""

    snapshot: str
    point: str
    before: str
    size: str
    time: str
    """How long its restore took, and the time expected; or the time expected alone."""


@dataclass
class Step:
    """One source in the recovery: what it will be (or was) restored from, and how it went."""

    source: str
    outcome: Outcome
    point: RecoveryPoint | None = None
    runtime: Runtime | None = field(default=None, repr=False)
    """Bound to the store the snapshot is read from."""
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    destination: str | None = None
    reason: str | None = None
    """Why it is skipped, unusable or failed, in one line."""
    duration_s: float | None = None
    summary: str | None = None

    def before(self, at: datetime) -> timedelta | None:
        return at - self.point.reached if self.point else None

    def shown(self, at: datetime) -> Shown | None:
        """The step's figures as a report shows them; None without a snapshot."""
        point, lag = self.point, self.before(at)
        if point is None or lag is None:
            return None
        expected = f"about {human_span(point.expected_s)}"
        taken = self.duration_s
        return Shown(
            snapshot=point.snapshot.snapshot_id,
            point=format_utc(point.reached),
            before=human_span(lag.total_seconds()),
            size=human_bytes(point.snapshot.manifest.size_bytes),
            time=f"{human_span(taken)} ({expected})" if taken is not None else expected,
        )

    def report(self, at: datetime) -> dict[str, Any]:
        """The step as the report's JSON gives it."""
        point, lag = self.point, self.before(at)
        return {
            "source": self.source,
            "outcome": self.outcome,
            "snapshot_id": point.snapshot.snapshot_id if point else None,
            "store": self.runtime.spec.name if self.runtime and point else None,
            "recovery_point": format_utc(point.reached) if point else None,
            "before_at_s": round(lag.total_seconds(), 3) if lag is not None else None,
            "how": point.how if point else None,
            "size_bytes": point.snapshot.manifest.size_bytes if point else None,
            "expected_s": round(point.expected_s, 1) if point else None,
            "duration_s": round(self.duration_s, 3) if self.duration_s is not None else None,
            "target": self.destination,
            "reason": self.reason,
            "summary": self.summary,
        }


@dataclass
class Recovery:
    """The plan, then its outcome: every source the runtime knows, in the runbook's order."""

    at: datetime
    steps: list[Step]

    @property
    def due(self) -> Iterator[Step]:
        """The sources named in the into file (all but the skipped)."""
        return (step for step in self.steps if step.outcome != "skipped")

    @property
    def usable(self) -> bool:
        return all(step.outcome != "unusable" for step in self.steps)

    @property
    def recovered(self) -> bool:
        return all(step.outcome == "restored" for step in self.due)

    @property
    def failed(self) -> Step | None:
        return next((step for step in self.steps if step.outcome in ("failed", "unusable")), None)

    def report(self) -> dict[str, Any]:
        return {
            "at": format_utc(self.at),
            "usable": self.usable,
            "recovered": self.recovered,
            "sources": [step.report(self.at) for step in self.steps],
        }

    def detail(self) -> str:
        """Each source's recovery point and duration, in one line for the audit record."""
        parts = []
        for step in self.due:
            lag = step.before(self.at)
            point = (
                f"{step.point.snapshot.snapshot_id}, point {format_utc(step.point.reached)} "
                f"({lag.total_seconds():.0f} s before)"
                if step.point and lag is not None
                else "no snapshot"
            )
            took = f", {step.duration_s:.1f} s" if step.duration_s is not None else ""
            parts.append(f"{step.source}: {step.outcome}, {point}{took}")
        return f"to {format_utc(self.at)}: " + "; ".join(parts)


def plan_recovery(
    runtime: Runtime,
    caller: Caller,
    at: datetime,
    into: Mapping[str, Mapping[str, Any]],
    store: str | None = None,
    sources: Mapping[str, Source] | None = None,
) -> Recovery:
    """What a recovery of the sources in `into` (name → restore options) to `at` would use;
    nothing is restored. Each source's snapshots are read from `store`, or from the primary
    (a copy store that holds them when the primary cannot be reached). `sources`: those the
    caller may recover (a site's location: its own), every source by default."""
    if at > utc_now() + CLOCK_SLACK:
        raise ConfigurationError(f"--at {format_utc(at)} lies ahead of this host's clock")
    steps = []
    for name, source in (runtime.sources if sources is None else sources).items():
        if name not in into:
            if source.enabled:
                steps.append(Step(name, "skipped", reason="not in the into file"))
            continue
        step = Step(name, "planned", options=dict(into[name]))
        step.destination = source.restore_options.parse(step.options).destination()
        try:
            step.runtime = (
                runtime.on_store(store) if store else holding_store(runtime, caller, name, LATEST)
            )
            step.point = source.recovery_point(step.runtime.store, at)
        except BackupError as exc:
            step.outcome, step.reason = "unusable", short_error(exc, runtime.secrets)
        steps.append(step)
    return Recovery(at, steps)


def recover(runtime: Runtime, caller: Caller, recovery: Recovery) -> Recovery:
    """Restore the planned sources in order, the first failure leaving the rest untouched;
    one audit record for the whole. A plan with an unusable source restores nothing."""
    audited = runtime.audit.operation("recover", via=caller.via, run_id=caller.run_id)
    with audited as noted:
        noted.target = f"everything to {format_utc(recovery.at)}"
        stopped = recovery.failed
        for step in recovery.due:
            if stopped is not None:
                step.outcome = step.outcome if step.outcome == "unusable" else "not started"
                continue
            restore_step(runtime, caller, step)
            if step.outcome == "failed":
                stopped = step
        noted.snapshots = [
            f"{step.source}/{step.point.snapshot.snapshot_id}"
            for step in recovery.due
            if step.point is not None
        ]
        noted.detail = recovery.detail()
        if stopped is not None:
            noted.failed(f"{stopped.source}: {stopped.reason}")
    return recovery


def restore_step(runtime: Runtime, caller: Caller, step: Step) -> None:
    """One source restored as `restore` restores it; its outcome, duration and summary noted
    on `step` (a failure is noted, not raised: the report tells every step)."""
    assert step.point is not None and step.runtime is not None
    caller.log(
        f"recovering {step.source}: {step.point.snapshot.snapshot_id} ({step.point.how}) into "
        f"{step.destination}"
    )
    started = time.monotonic()
    try:
        restored = restore(
            step.runtime,
            caller,
            step.source,
            step.point.snapshot.snapshot_id,
            {**step.options, **step.point.options},
            spelled=lambda name: f"{step.source}.{name}",
        )
    except Exception as exc:  # any failure stops the recovery here, said in one line
        step.outcome, step.reason = "failed", short_error(exc, runtime.secrets)
    else:
        step.outcome, step.summary = "restored", restored.summary
    step.duration_s = time.monotonic() - started
