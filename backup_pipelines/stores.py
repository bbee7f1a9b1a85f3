"""Where snapshots are kept: the primary store and the copy stores beside it (3-2-1).

The primary is what `BACKUP_S3_*` (or `BACKUP_ARTIFACTS_DIR`) configure.
`BACKUP_STORES_FILE` names copy stores, each holding every snapshot, WAL
file, audit record and drill verdict the primary holds, byte for byte:

```
offsite:                       # lowercase letters, digits and _
  s3:
    endpoint_url: https://s3.eu-central-2.example.com
    bucket: crm-backups-offsite
    prefix: backups            # the default
    region: eu-central-2
    access_key: ${OFFSITE_ACCESS_KEY}
    secret_key: ${OFFSITE_SECRET_KEY}
    object_lock_days: 90       # optional, with object_lock_mode
    prune_access_key: ${OFFSITE_PRUNE_ACCESS_KEY}
    prune_secret_key: ${OFFSITE_PRUNE_SECRET_KEY}
  retention: {daily: 30, monthly: 36}   # optional: over BACKUP_RETENTION_*
nas:
  local: {root: /mnt/nas/backups}
```

The file is read like the targets file (`config_files.py`): every problem
at once, naming the file, the store and the field; keys only as `${VAR}`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from backup_pipelines.config_files import (
    REFUSED,
    InvalidFile,
    dotted,
    is_secret,
    load,
    mapping,
    referenced,
    retention_overrides,
)
from backup_pipelines.redaction import validation_problems
from backup_pipelines.settings import (
    BackupSettings,
    RetentionOverrides,
    check_endpoint,
    check_prune_keys,
    secret_values,
    upper_case,
)
from backup_pipelines.snapshot.store import PRIMARY, SnapshotStore
from backup_pipelines.storage.names import shown

logger = logging.getLogger(__name__)

STORE_NAME = re.compile(r"[a-z0-9_]{1,63}")
KINDS = ("s3", "local")


class S3Location(BaseModel):
    """A bucket (and prefix) of an S3-compatible service, with the keys that write there and,
    optionally, the keys that may delete (prune) and the Object Lock every object gets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = None
    bucket: str = Field(min_length=3)
    prefix: str = "backups"
    region: str = "us-east-1"
    access_key: SecretStr
    secret_key: SecretStr
    object_lock_days: int | None = Field(None, ge=1)
    object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] = "GOVERNANCE"
    prune_access_key: SecretStr | None = None
    prune_secret_key: SecretStr | None = None

    @field_validator(
        "endpoint_url", "object_lock_days", "prune_access_key", "prune_secret_key", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """As in the environment, an empty value counts as unset (a role without prune keys
        gives an empty variable)."""
        return None if value == "" else value

    _endpoint = field_validator("endpoint_url")(check_endpoint)

    _upper_case = field_validator("object_lock_mode", mode="before")(upper_case)

    @model_validator(mode="after")
    def _prune_keys_together(self) -> S3Location:
        names = "prune_access_key and prune_secret_key"
        check_prune_keys(self.prune_access_key, self.prune_secret_key, names)
        return self

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.strip('/')}/ at {self.endpoint_url or 'AWS'}"


class LocalLocation(BaseModel):
    """A directory: another disk, a NAS mount."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Path

    def describe(self) -> str:
        return f"the local store {self.root}"


@dataclass(frozen=True)
class StoreSpec:
    """One store: its name (`primary`, or the stores file's), where it is, and the retention
    rules it keeps by over `BACKUP_RETENTION_*`."""

    name: str
    location: S3Location | LocalLocation
    retention: RetentionOverrides = field(default_factory=RetentionOverrides)

    def secrets(self) -> list[str]:
        return secret_values(self.location)


def primary_store(shared: BackupSettings) -> StoreSpec:
    """The store `BACKUP_S3_*` configure, or the local one under `BACKUP_ARTIFACTS_DIR`."""
    if not shared.s3_enabled:
        return StoreSpec(PRIMARY, LocalLocation(root=shared.artifacts_dir))
    assert shared.s3_bucket and shared.s3_access_key and shared.s3_secret_key
    return StoreSpec(
        PRIMARY,
        S3Location(
            endpoint_url=shared.s3_endpoint_url,
            bucket=shared.s3_bucket,
            prefix=shared.s3_prefix,
            region=shared.s3_region,
            access_key=shared.s3_access_key,
            secret_key=shared.s3_secret_key,
            object_lock_days=shared.s3_object_lock_days,
            object_lock_mode=shared.s3_object_lock_mode,
            prune_access_key=shared.s3_prune_access_key,
            prune_secret_key=shared.s3_prune_secret_key,
        ),
    )


class InvalidStores(InvalidFile):
    """What is wrong with the stores file, every problem at once."""

    what = "stores file"


def read_stores(
    file: Path, primary: StoreSpec, environ: Mapping[str, str] = os.environ
) -> list[StoreSpec]:
    """The copy stores the file names, in its order; `InvalidStores` lists every problem."""
    problems: list[str] = []
    found = []
    for name, fields in mapping(
        load(file, "BACKUP_STORES_FILE", InvalidStores), "the file", problems
    ).items():
        if not isinstance(name, str) or STORE_NAME.fullmatch(name) is None:
            problems.append(f"{shown(name)} is not a store name (lowercase letters, digits and _)")
        elif name == PRIMARY:
            problems.append(f"{PRIMARY}: is the store BACKUP_S3_* configure; name it otherwise")
        elif (spec := _store(name, fields, environ, problems)) is not None:
            found.append(spec)
    problems += _overlaps(primary, found)
    if problems:
        raise InvalidStores(file, problems)
    return found


def _store(
    name: str, fields: object, environ: Mapping[str, str], problems: list[str]
) -> StoreSpec | None:
    given = mapping(fields, name, problems)
    before = len(problems)
    kinds = [kind for kind in KINDS if kind in given]
    problems += [
        f"{name}: {shown(key)} is not a setting of a store (its settings: s3 or local, and "
        "retention)"
        for key in given
        if key not in (*KINDS, "retention")
    ]
    if len(kinds) != 1:
        problems.append(f"{name}: needs one of s3 or local")
    retention = retention_overrides(given.get("retention"), name, problems)
    if len(kinds) != 1:
        return None
    model = S3Location if kinds[0] == "s3" else LocalLocation
    location = _location(model, f"{name}.{kinds[0]}", given[kinds[0]], environ, problems)
    if len(problems) > before or location is None or retention is None:
        return None
    return StoreSpec(name, location, retention)


def _location(
    model: type[S3Location] | type[LocalLocation],
    where: str,
    fields: object,
    environ: Mapping[str, str],
    problems: list[str],
) -> S3Location | LocalLocation | None:
    values = {}
    refused = []
    for key, raw in mapping(fields, where, problems).items():
        info = model.model_fields.get(key)
        secret = info is not None and is_secret(info.annotation)
        value = referenced(raw, f"{where}.{key}", environ, problems, secret=secret)
        if value is REFUSED:
            refused.append(f"{where}.{key}: ")
        else:
            values[key] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        found = validation_problems(exc, lambda loc: f"{where}.{dotted(loc)}")
        problems += [p for p in found if not p.startswith(tuple(refused))]  # said already
        return None


def _overlaps(primary: StoreSpec, copies: list[StoreSpec]) -> list[str]:
    """Two stores that are one place would hold each snapshot once, not twice."""
    problems = []
    seen = {_place(primary): PRIMARY}
    for spec in copies:
        place = _place(spec)
        if place in seen:
            problems.append(f"{spec.name}: is the same place as {seen[place]}")
        seen.setdefault(place, spec.name)
    return problems


def _place(spec: StoreSpec) -> tuple[str, ...]:
    location = spec.location
    if isinstance(location, LocalLocation):
        return ("local", str(location.root.resolve()))
    return ("s3", location.endpoint_url or "", location.bucket, location.prefix.strip("/"))


@cache
def warn_local_store(root: Path) -> None:
    """Said once per process: an operator who meant to use S3 must notice."""
    logger.warning(
        "S3 is not configured (BACKUP_S3_BUCKET, BACKUP_S3_ACCESS_KEY and BACKUP_S3_SECRET_KEY "
        "are needed): snapshots are kept in the local store %s",
        root,
    )


def build_store(spec: StoreSpec, shared: BackupSettings) -> SnapshotStore:
    """The store `spec` describes, over its backend (boto3 only for S3): a local one made
    private, or readable by `BACKUP_STORE_GROUP`; S3 with `BACKUP_S3_TIMEOUT_S`."""
    location = spec.location
    if isinstance(location, LocalLocation):
        from backup_pipelines.storage.local import LocalBackend

        if spec.name == PRIMARY:
            warn_local_store(location.root)
        return SnapshotStore(LocalBackend(location.root, shared.store_group), spec.name)
    from backup_pipelines.storage.s3 import ObjectLock, S3Backend

    days, prune = location.object_lock_days, location.prune_access_key
    return SnapshotStore(
        S3Backend(
            bucket=location.bucket,
            access_key=location.access_key.get_secret_value(),
            secret_key=location.secret_key.get_secret_value(),
            endpoint_url=location.endpoint_url,
            region=location.region,
            prefix=location.prefix,
            timeout_s=shared.s3_timeout_s,
            object_lock=ObjectLock(location.object_lock_mode, days) if days else None,
            prune_keys=(
                (prune.get_secret_value(), location.prune_secret_key.get_secret_value())
                if prune and location.prune_secret_key
                else None
            ),
        ),
        spec.name,
    )
