"""What a backed-up system is, declared once in its own package: a `Source`.

A source says what it is called, which settings it reads, how to connect,
dump, deep-verify, drill and restore, and which restore options it takes.
Everything else is generated from the registry (`registry.py`): the Dagster
assets (backups and their verifications), checks, jobs, schedules, freshness
and pools, `restore_job`'s config and the `backup-pipelines` command's flags.
A source imports nothing from Dagster, and commits nothing itself: the
store is handed to it only where it keeps data of its own beside its
snapshots (restic's repository, PostgreSQL's WAL archive).

What only some kinds can do is declared, not guessed: `watches_changes`
(a sensor backs it up when its data changed) and `continuous_archive`
(data archived between snapshots, which monitoring watches).

A registered `Source` class is a kind; an instance is one system
of that kind, bound to its settings: the one the `BACKUP_<KIND>_*` variables
describe (named like its kind), or a `Target` of the targets file
(`<kind>.<target>`, see `targets.py`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backup_pipelines.errors import ConfigurationError, SnapshotNotFound, SourceUnavailable
from backup_pipelines.redaction import mask_url, validation_problems
from backup_pipelines.settings import (
    BackupSettings,
    RetentionOverrides,
    SourceSettings,
    env_name,
    field_variables,
    secret_values,
)
from backup_pipelines.snapshot.manifest import format_utc
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot

Log = Callable[[str], None]


def cli(flag: str | None = None, metavar: str | None = None) -> dict[str, Any]:
    """How a restore option reads on the command line, when not `--<field-name> VALUE`."""
    return {"flag": flag, "metavar": metavar}


SECRET_OPTION = {"secret": True}
"""A restore option taken on the command line only, never as run config (stored with the run)."""


class RestoreOptions(BaseModel):
    """Where and how to restore. Each source's subclass declares `target` (the system to
    restore into) and its own options; the CLI flags and `restore_job`'s config are made
    from these fields, each field's description being its help."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    force: bool = Field(False, description="replace a target that is not empty")

    @field_validator("*", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        """An empty target would be read as the current directory or the default server."""
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        return value

    @classmethod
    def _cli(cls, name: str) -> dict[str, Any]:
        extra = cls.model_fields[name].json_schema_extra
        return extra if isinstance(extra, dict) else {}

    @classmethod
    def flag(cls, name: str) -> str:
        """An option's command-line flag: its own (`--target-dsn`) or `--<field-name>`."""
        return str(cls._cli(name).get("flag") or f"--{name.replace('_', '-')}")

    @classmethod
    def metavar(cls, name: str) -> str:
        return str(cls._cli(name).get("metavar") or name.upper())

    @classmethod
    def command_line(cls, source: str, snapshot_id: str) -> str:
        """The command that restores this snapshot, its target left for the operator to name,
        and the options it may take in brackets (`[--database NAME] [--force]`)."""
        words = [f"backup-pipelines restore {source} --snapshot {snapshot_id}"]
        words.append(f"{cls.flag('target')} {cls.metavar('target')}")
        fields = sorted(cls.model_fields.items(), key=lambda item: item[0] == "force")
        for name, info in fields:  # `--force` last
            if name == "target" or info.json_schema_extra == SECRET_OPTION:
                continue
            shown = (
                cls.flag(name)
                if info.annotation is bool
                else f"{cls.flag(name)} {cls.metavar(name)}"
            )
            words.append(f"[{shown}]")
        return " ".join(words)

    @classmethod
    def in_config_terms(cls, message: str) -> str:
        """`message` with the command's flags (`--force`, `--target-dsn`) written as the config
        keys `restore_job` takes (`'force: true'`, `'target'`): what the launchpad says."""
        keys = {
            cls.flag(name): f"'{name}: true'" if info.annotation is bool else f"'{name}'"
            for name, info in cls.model_fields.items()
        }
        pattern = re.compile(
            rf"({'|'.join(map(re.escape, sorted(keys, key=len, reverse=True)))})\b"
        )
        return pattern.sub(lambda found: keys[found.group()], message)

    def destination(self) -> str:
        """Where the restore goes, as it may be shown (a URL's password masked)."""
        return mask_url(str(getattr(self, "target", "")))

    @classmethod
    def parse(
        cls, values: Mapping[str, Any], spelled: Callable[[str], str] = str, subject: str = ""
    ) -> Self:
        """Validated options for a restore of `subject` (a source); `ConfigurationError` names
        each option wrong (as `spelled` writes it: a flag or a config key), and an option
        another kind takes, and never echoes a value, which may be a secret."""
        foreign = sorted(set(values) - set(cls.model_fields))
        if foreign:
            raise ConfigurationError(
                f"{', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to "
                f"{subject}: its options are {', '.join(cls.model_fields)}"
            )
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = validation_problems(exc, lambda loc: spelled(str(loc[0])) if loc else "")
            raise ConfigurationError("; ".join(p.removeprefix(": ") for p in problems)) from None


@dataclass(frozen=True)
class DrillResult:
    """What a drill proved: the figures it compared with the manifest's (rows per table, keys
    per database, objects) and the problems found (none: the snapshot restores equal)."""

    problems: Sequence[str]
    figures: Mapping[str, Any] = field(default_factory=dict)
    warnings: Sequence[str] = ()
    """Worth a look, not a broken backup (a live cache's keys expire between count and sync)."""

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class ArchiveReach:
    """How far a continuous archive reaches: its newest file, when that was stored, and the
    bytes the live system gave up because the store could not be reached (gaps)."""

    newest: str | None
    archived_at: datetime | None
    given_up_bytes: int = 0


class ContinuousArchive(ABC):
    """What a source archives between its snapshots, as the live system writes it:
    PostgreSQL's WAL beside its base backups (a binlog or an append-only file stream would be
    others). Monitoring (an asset and its sensor, the metrics, an alert rule) watches every
    one the same way, without knowing the kind.
    """

    def __init__(self, name: str, max_age_s: int, description: str):
        self.name = name
        """Its folder in the store, and its name wherever a source is named."""
        self.max_age_s = max_age_s
        """How old its newest file may grow before archiving counts as stalled."""
        self.description = description
        """What it is and what feeds it, in a sentence (its asset's description)."""

    @abstractmethod
    def reach(self, store: SnapshotStore) -> ArchiveReach:
        """How far the archive in `store` reaches."""

    @abstractmethod
    def waiting(self, newest: str | None) -> int | None:
        """Finished files the live system holds that the archive (newest: `newest`) lacks;
        None when the live system cannot say."""

    @abstractmethod
    def copy(self, source: SnapshotStore, target: SnapshotStore) -> list[str]:
        """Every file of the archive in `source` that `target` lacks, into `target`, each
        read back; the names copied."""

    @abstractmethod
    def stalled(self, since: datetime, age_s: float, waiting: int | None) -> str:
        """Why archiving counts as stalled, in one line an operator acts on: nothing
        archived since `since` (`age_s` ago), `waiting` finished files held back."""


@dataclass(frozen=True)
class RecoveryPoint:
    """What a recovery to a moment takes from one source: the snapshot, the moment its
    target will then hold (never after the one asked for), how, and the restore options
    that reach it (a base backup's WAL replayed to a time)."""

    snapshot: StoredSnapshot
    reached: datetime
    how: str
    options: Mapping[str, Any] = field(default_factory=dict)
    expected_s: float = 0.0
    """How long the restore should take, from the snapshot's own figures."""


def backup_seconds(snapshot: StoredSnapshot) -> float:
    """How long the snapshot took to make: what its restore is expected to take (a restore
    moves the same bytes, through the same tools, the other way)."""
    manifest = snapshot.manifest
    return max(0.0, (manifest.finished_at - manifest.started_at).total_seconds())


@dataclass(frozen=True)
class Target:
    """One named system of a kind, as the targets file declares it."""

    name: str
    file: Path
    enabled: bool = True
    """A disabled target is backed up by nothing; its snapshots stay listed, restorable and
    pruned."""
    retention: RetentionOverrides = field(default_factory=RetentionOverrides)
    site: str | None = None
    """Where its backups run: only the code location started with this `BACKUP_SITE` loads
    it (none: the location without one)."""


SettingsT = TypeVar("SettingsT", bound=SourceSettings)
OptionsT = TypeVar("OptionsT", bound=RestoreOptions)


class Source(ABC, Generic[SettingsT, OptionsT]):
    """One backed-up system, bound to its settings (and the shared ones, for the store).

    A subclass names its settings and restore options as its type arguments
    (`class Consul(Source[ConsulSettings, ConsulRestore])`); they become its
    `settings_model` and `restore_options`.
    """

    kind: ClassVar[str]
    """The kind's word (lowercase): the CLI's, the targets file's, and the prefix of every
    name a system of this kind gets."""
    dagster_kind: ClassVar[str]
    """The Dagster kind shown on the asset (the product's name, or the tool's)."""
    description: ClassVar[str]
    """What one snapshot holds (the backup asset's description)."""
    system: ClassVar[str]
    """The live system, upstream of its backup in the asset graph."""
    settings_model: ClassVar[type[SourceSettings]]
    restore_options: ClassVar[type[RestoreOptions]]
    address_settings: ClassVar[tuple[str, ...]] = ()
    """The settings that say where the system is: named when it cannot be reached."""
    watches_changes: ClassVar[bool] = False
    """Whether a sensor backs it up when `fingerprint()` changes."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is Source:
                cls.settings_model, cls.restore_options = get_args(base)

    def __init__(self, settings: SettingsT, shared: BackupSettings, target: Target | None = None):
        self.settings = settings
        self.shared = shared
        self.target = target

    @property
    def name(self) -> str:
        """The store's folder, the CLI's and the events' word: the kind's, or
        `<kind>.<target>` for a target of the targets file."""
        return self.kind if self.target is None else f"{self.kind}.{self.target.name}"

    @property
    def enabled(self) -> bool:
        """Backed up by Dagster: not turned off by `BACKUP_<KIND>_ENABLED` or its target."""
        return self.settings.enabled and (self.target is None or self.target.enabled)

    @property
    def site(self) -> str | None:
        """The site whose code location backs it up (`Target.site`); None for every source
        that is not a target given one."""
        return self.target.site if self.target is not None else None

    @property
    def cron(self) -> str:
        return self.settings.cron

    def secrets(self) -> list[str]:
        return secret_values(self.settings)

    def setting(self, field_name: str) -> str:
        """Where the operator sets `field_name`: its variable, or its key in the targets file."""
        if self.target is None:
            return env_name(self.settings_model, field_name)
        return f"{self.name}.{field_name} in {self.target.file}"

    def in_own_terms(self, message: str) -> str:
        """`message` with the kind's variables (`BACKUP_REDIS_PASSWORD`) named as this target
        sets them (`<kind>.<target>.password in targets.yaml`), so it says what to edit."""
        if self.target is None:
            return message
        model = self.settings_model
        where = {
            variable: self.setting(field_name)
            for field_name in model.model_fields
            for variable in field_variables(model, field_name)
        }
        pattern = re.compile(rf"\b({'|'.join(map(re.escape, where))})\b")
        return pattern.sub(lambda found: where[found.group()], message)

    def unreachable(self, exc: SourceUnavailable) -> str:
        """The failure in one line, naming the settings that say where the system is."""
        names = [self.setting(name) for name in self.address_settings]
        line = f"{exc}; check {' and '.join(names)}" if names else str(exc)
        return self.in_own_terms(line)

    @abstractmethod
    def dump(self, staged: StagedSnapshot, log: Log) -> None:
        """Stream the system's data into `staged` and record its figures in `staged.stats`."""

    @abstractmethod
    def deep_verify(self, reader: SnapshotReader) -> list[str]:
        """Prove the snapshot restorable without a target; the problems found (none = sound)."""

    @abstractmethod
    def restore(self, reader: SnapshotReader, options: OptionsT, log: Log) -> str:
        """Restore into `options.target`, touching it only once the snapshot is proven."""

    @abstractmethod
    def drill(self, reader: SnapshotReader, log: Log) -> DrillResult:
        """Restore into a scratch target made for the drill (never the system backed up),
        compare what came back with the manifest's figures, and remove the scratch."""

    @classmethod
    def plotted(cls, stats: Mapping[str, Any]) -> dict[str, int | float]:
        """Numbers from a snapshot's stats that are buried in JSON, as entries Dagster plots
        across materializations (the stats' top-level numbers are plotted already)."""
        return {}

    @property
    def continuous_archive(self) -> ContinuousArchive | None:
        """What it archives between snapshots; None when its snapshots are all it keeps."""
        return None

    def not_configured(self) -> str | None:
        """Why the source cannot be backed up yet (its schedule skips, saying so), or None."""
        return None

    def fingerprint(self) -> list[int]:
        """A cheap value that changes whenever the data does (`watches_changes` sources)."""
        raise NotImplementedError

    def snapshot_to_restore(
        self, store: SnapshotStore, snapshot_id: str, options: OptionsT
    ) -> StoredSnapshot:
        """The snapshot a restore with `options` uses: `snapshot_id`, or the newest."""
        return store.find(self.name, snapshot_id)

    def recovery_point(self, store: SnapshotStore, moment: datetime) -> RecoveryPoint:
        """The newest snapshot complete at `moment`: its target then holds the data as it was
        when that snapshot began (nothing written after `moment` can be in it)."""
        snapshot = store.newest_complete_at(self.name, moment)
        if snapshot is None:
            raise SnapshotNotFound(
                f"no {self.name} snapshot in {store.describe()} was complete at "
                f"{format_utc(moment)}"
            )
        return RecoveryPoint(
            snapshot,
            snapshot.manifest.started_at,
            "the snapshot, as it began",
            expected_s=backup_seconds(snapshot),
        )

    def copy_own_data(
        self,
        source: SnapshotStore,
        target: SnapshotStore,
        snapshots: Sequence[StoredSnapshot],
    ) -> int:
        """Copy what the source keeps beside its snapshots (restic's repository) from `source`
        into `target`, as much as `snapshots` need (those `target` keeps, and those about to
        reach it): called before their manifests go. How many objects went."""
        return 0

    def forgetting(
        self,
        store: SnapshotStore,
        deleted: Sequence[StoredSnapshot],
        kept: Sequence[StoredSnapshot],
    ) -> Callable[[], None] | None:
        """What retention must release outside the snapshots (restic's, the WAL archive's)
        once `deleted` are gone.

        Called before anything is deleted, so it can refuse (a missing
        password); the callable it returns runs after the manifests are gone.
        """
        return None
