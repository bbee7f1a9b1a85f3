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

from pydantic import BaseModel, ConfigDict, field_serializer, field_validator

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "backup-pipelines-snapshot"
MANIFEST_VERSION = 1
SNAPSHOT_ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_utc(moment: datetime) -> str:
    """UTC ISO-8601 with a `Z`, to the second, as the contract writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_snapshot_id(run_id: str, started_at: datetime) -> str:
    """`YYYYMMDDTHHMMSSZ-<8 hex of the run id>`: sorts in time order, ties broken by run."""
    stamp = started_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{run_id.replace('-', '')[:8].lower()}"


class FileEntry(BaseModel):
    """One stored artifact; size and sha256 are of the bytes as stored."""

    model_config = ConfigDict(frozen=True)

    name: str
    size: int
    sha256: str


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    format: str = MANIFEST_FORMAT
    version: int = MANIFEST_VERSION
    source: str
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

    @field_serializer("started_at", "finished_at")
    def _utc(self, moment: datetime) -> str:
        return format_utc(moment)

    @property
    def size_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def file(self, name: str) -> FileEntry:
        for entry in self.files:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def to_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        return cls.model_validate_json(raw)
