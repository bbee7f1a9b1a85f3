"""`manifest.json` version 1: what makes a directory of artifacts a snapshot.

The manifest is written last, after every artifact is durable, so its
presence is the one signal that a snapshot is complete (restic's "snapshot
last" ordering). Field names and formats are the contract's.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from backup_pipelines.redaction import validation_problems
from backup_pipelines.storage.layout import MANIFEST_NAME
from backup_pipelines.storage.names import (
    check_artifact_name,
    check_snapshot_id,
    check_source,
    split_source,
)

MANIFEST_FORMAT = "backup-pipelines-snapshot"
MANIFEST_VERSION = 1
ENCRYPTIONS = (None, "age")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MAX_PROBLEMS_SHOWN = 3


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_utc(moment: datetime) -> str:
    """UTC ISO-8601 with a `Z`, to the second, as the contract writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def typed_moment(text: str) -> datetime:
    """A moment as an operator types it (a flag, run config): an ISO-8601 date or time, UTC
    when it names no zone. `ValueError` when it is none."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def new_snapshot_id(run_id: str, started_at: datetime) -> str:
    """`YYYYMMDDTHHMMSSZ-<8 hex of the run id>`: sorts in time order, ties broken by run."""
    stamp = started_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{run_id.replace('-', '')[:8].lower()}"


class FileEntry(BaseModel):
    """One stored artifact; size and sha256 are of the bytes as stored."""

    model_config = ConfigDict(frozen=True)

    name: str
    size: int = Field(ge=0)
    sha256: str

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if value == MANIFEST_NAME:
            raise ValueError(f"an artifact may not be called {MANIFEST_NAME}")
        return check_artifact_name(value)

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if SHA256_HEX.fullmatch(value) is None:
            raise ValueError("is not a sha256 in lowercase hex")
        return value


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    format: str = MANIFEST_FORMAT
    version: int = MANIFEST_VERSION
    source: str
    kind: str
    """The kind of system; `source` is `<kind>.<target>` for a target of the
    targets file, the kind alone otherwise."""
    target: str | None = None
    snapshot_id: str
    started_at: datetime
    finished_at: datetime
    run_id: str
    compression: str = "zstd"
    encryption: str | None = None
    files: list[FileEntry]
    stats: dict[str, Any] = {}

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value != MANIFEST_FORMAT:
            raise ValueError(f"not a {MANIFEST_FORMAT} manifest")
        return value

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != MANIFEST_VERSION:
            raise ValueError(f"manifest version {value} is not supported (expected 1)")
        return value

    _source = field_validator("source")(check_source)

    @model_validator(mode="before")
    @classmethod
    def _kind_and_target(cls, values: Any) -> Any:
        """Manifests written before targets existed name only the source: the kind it is."""
        if isinstance(values, dict) and "kind" not in values:
            source = values.get("source")
            if isinstance(source, str) and "." not in source:
                return {**values, "kind": source}
        return values

    _snapshot_id = field_validator("snapshot_id")(check_snapshot_id)

    @field_validator("started_at", "finished_at")
    @classmethod
    def _aware(cls, moment: datetime) -> datetime:
        """Times without a zone would not compare with the others (retention sorts by them)."""
        if moment.tzinfo is None:
            raise ValueError("has no time zone (the contract writes UTC with a Z)")
        return moment.astimezone(UTC)

    @field_validator("compression")
    @classmethod
    def _zstd(cls, value: str) -> str:
        if value != "zstd":
            raise ValueError("only zstd is supported")
        return value

    @field_validator("encryption")
    @classmethod
    def _known_encryption(cls, value: str | None) -> str | None:
        if value not in ENCRYPTIONS:
            raise ValueError("must be null or 'age'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        """The id carries the start time to the second, and no artifact is listed twice."""
        if split_source(self.source) != (self.kind, self.target):
            raise ValueError("source is not <kind> or <kind>.<target> of its kind and target")
        if self.snapshot_id[:16] != self.started_at.strftime("%Y%m%dT%H%M%SZ"):
            raise ValueError("snapshot_id does not carry started_at")
        names = [entry.name for entry in self.files]
        if len(set(names)) != len(names):
            raise ValueError("an artifact is listed twice")
        return self

    @field_serializer("started_at", "finished_at")
    def _utc(self, moment: datetime) -> str:
        return format_utc(moment)

    @property
    def size_bytes(self) -> int:
        """The bytes the snapshot stored: its artifacts, and what its source keeps beside
        them on its behalf (`data_added`: the bytes restic added to its repository, where the
        snapshot's own artifact is only a pointer of a few hundred bytes)."""
        beside = self.stats.get("data_added")
        return sum(entry.size for entry in self.files) + (
            beside if isinstance(beside, int) and beside > 0 else 0
        )

    def file(self, name: str) -> FileEntry:
        for entry in self.files:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def to_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        """Parse and validate; `ValueError` says briefly what is wrong, never echoing the input."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ValueError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """Pydantic's errors as one bounded line: where and which rule, without the input."""
    problems = validation_problems(exc, lambda loc: ".".join(map(str, loc)) or "manifest")
    shown, more = problems[:MAX_PROBLEMS_SHOWN], len(problems) - MAX_PROBLEMS_SHOWN
    return "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")
