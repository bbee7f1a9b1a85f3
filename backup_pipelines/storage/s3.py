"""Objects in S3 or an S3-compatible store (MinIO, Spaces), through boto3.

Files go up as multipart uploads from the staged file, never through memory
whole: the part size grows with the file so the 10,000-part limit is never
reached. An upload that fails is aborted by boto3's transfer manager; when
the connection is gone for that too, the open upload stays listed under its
prefix (`children`, `last_change`) until `delete_prefix` aborts it.

Tamper-proof storage: with `object_lock`, every object is written with
Object Lock retention (the upload's headers, then `PutObjectRetention`,
which multipart uploads need on some stores); checksums are always sent, as
S3 requires on a bucket with a default retention. Deletes use the prune
keys when given, so the keys on a backup host can lack delete rights. In a
versioned bucket (every bucket with Object Lock is one) a delete removes
each version, so no delete marker hides data that stays behind, and
`retained_until` says how long a lock still protects a prefix.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import cache, cached_property
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from backup_pipelines.errors import BackupError, ConfigurationError, StoreError
from backup_pipelines.redaction import redact
from backup_pipelines.storage import Backend, Fetched, ObjectExists, ToolAccess, key_parts

logger = logging.getLogger(__name__)

MIB = 1 << 20
MIN_PART_SIZE = 8 * MIB
MAX_PARTS = 10_000
PARTS_HEADROOM = 9_000
UPLOAD_CONCURRENCY = 4
S3_ERRORS = (BotoCoreError, ClientError, Boto3Error)
MISSING = ("NoSuchKey", "404")
NO_LOCK_CONFIGURATION = "ObjectLockConfigurationNotFoundError"
LEGAL_HOLD = datetime.max.replace(tzinfo=UTC)
"""What `retained_until` says of an object under legal hold: locked with no end."""


@dataclass(frozen=True)
class ObjectLock:
    """The retention every object gets: a mode (GOVERNANCE or COMPLIANCE) and a period."""

    mode: str
    days: int

    def retention(self) -> dict[str, Any]:
        until = datetime.now(UTC) + timedelta(days=self.days)
        return {"Mode": self.mode, "RetainUntilDate": until}


def part_size_for(size: int) -> int:
    """Parts of at least 8 MiB, growing so a file never needs more than ~9,000 parts."""
    return max(MIN_PART_SIZE, math.ceil(size / PARTS_HEADROOM / MIB) * MIB)


SESSION_LOCK = threading.Lock()


@cache
def shared_session() -> boto3.session.Session:
    """One boto3 session per process. Each new session parses botocore's models again (about
    0.1 s of CPU per store, at every command and every `wal-push`); a session is not
    thread-safe, so clients are made from it under `SESSION_LOCK`."""
    return boto3.session.Session()


class S3Backend(Backend):
    def __init__(
        self,
        *,
        bucket: str,
        access_key: str,
        secret_key: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        prefix: str = "backups",
        max_attempts: int = 5,
        timeout_s: float = 60,
        object_lock: ObjectLock | None = None,
        prune_keys: tuple[str, str] | None = None,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.object_lock = object_lock
        self.region = region
        self._keys = (access_key, secret_key)
        self._prune_keys = prune_keys
        self._secrets = (access_key, secret_key, *(prune_keys or ()))
        config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            # A store that accepts and never answers fails each attempt after `timeout_s`
            # without a byte (S3's answers come at once; a large upload's part, while it
            # is sent, is not waiting for one).
            connect_timeout=min(10, timeout_s),
            read_timeout=timeout_s,
            s3={"addressing_style": "path"},
            # Checksums are sent (S3 refuses uploads into a bucket with a default
            # retention without one); what is read back is proven by our own sha256.
            request_checksum_calculation="when_supported",
            response_checksum_validation="when_required",
        )

        def client(keys: tuple[str, str]) -> Any:
            with SESSION_LOCK:
                return shared_session().client(
                    "s3",
                    endpoint_url=endpoint_url,
                    region_name=region,
                    aws_access_key_id=keys[0],
                    aws_secret_access_key=keys[1],
                    config=config,
                )

        self.client = client((access_key, secret_key))
        self.deleter = client(prune_keys) if prune_keys else self.client
        """The client every delete goes through: the prune keys' when given."""

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/ at {self.endpoint_url or 'AWS'}"

    def tool_access(self, key: str, *, pruning: bool = False) -> ToolAccess:
        endpoint = (self.endpoint_url or "https://s3.amazonaws.com").rstrip("/")
        keys = self._prune_keys if pruning and self._prune_keys else self._keys
        return ToolAccess(f"s3:{endpoint}/{self.bucket}/{self.key(key)}", (*keys, self.region))

    def key(self, key: str) -> str:
        """`<prefix>/<key>`: the object's name in the bucket."""
        return "/".join(part for part in (self.prefix, *key_parts(key)) if part)

    def location(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{self.key(prefix)}/"

    def failure(self, action: str, key: str, exc: Exception) -> StoreError:
        reason = redact(" ".join(str(exc).split()), self._secrets)
        return StoreError(f"S3 {action} of {key} failed at {self.describe()}: {reason}")

    def upload_failure(self, name: str, exc: Exception) -> BackupError:
        """A bucket without Object Lock refuses locked uploads: say what to fix, once."""
        if self.object_lock and "objectlock" in str(exc).lower().replace(" ", ""):
            return ConfigurationError(
                f"BACKUP_S3_OBJECT_LOCK_DAYS is set, but the bucket {self.bucket} refuses "
                "Object Lock retention: create the bucket with Object Lock enabled, or unset "
                "BACKUP_S3_OBJECT_LOCK_DAYS"
            )
        return self.failure("upload", name, exc)

    def put_file(self, key: str, path: Path, progress: Callable[[int], None] | None = None) -> None:
        """One PutObject for a file smaller than a part (a WAL segment, a manifest): the
        transfer manager's threads and futures cost more than they save there."""
        size = path.stat().st_size

        def send(name: str, extra: dict[str, Any], config: TransferConfig) -> None:
            if size < MIN_PART_SIZE:
                with path.open("rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=name, Body=body, **extra)
                if progress is not None:
                    progress(size)
                return
            self.client.upload_file(
                str(path), self.bucket, name, ExtraArgs=extra, Config=config, Callback=progress
            )

        self._transfer_into(key, size, send)

    def put_stream(self, key: str, stream: BinaryIO, size: int | None = None) -> None:
        """A multipart upload read from `stream` a part at a time (boto3 keeps a few parts in
        memory, never the whole object)."""

        def send(name: str, extra: dict[str, Any], config: TransferConfig) -> None:
            self.client.upload_fileobj(stream, self.bucket, name, ExtraArgs=extra, Config=config)

        self._transfer_into(key, size or 0, send)

    def copy_from(self, other: Backend, key: str, size: int) -> bool:
        """S3's own copy (`UploadPartCopy` for large objects) when `other` is a bucket of the
        same service, which this backend's keys may read; streamed otherwise."""
        if not isinstance(other, S3Backend) or other.endpoint_url != self.endpoint_url:
            return False

        def send(name: str, extra: dict[str, Any], config: TransferConfig) -> None:
            copied = {"Bucket": other.bucket, "Key": other.key(key)}
            try:
                self.client.copy(copied, self.bucket, name, ExtraArgs=extra, Config=config)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("AccessDenied", "403"):
                    raise _CopyRefused from None
                raise

        try:
            self._transfer_into(key, size, send)
        except _CopyRefused:
            return False  # this store's keys may not read the other: stream it
        return True

    def _transfer_into(
        self, key: str, size: int, send: Callable[[str, dict[str, Any], TransferConfig], None]
    ) -> None:
        """One managed (multipart) transfer of `size` bytes into `key`: `send` gets the
        object's name, the Object Lock headers and the transfer config; the lock is confirmed
        after it (multipart uploads need that on some stores)."""
        name = self.key(key)
        retention = self.object_lock.retention() if self.object_lock else None
        try:
            send(name, _lock_headers(retention), _transfer(size))
            if retention:
                self.client.put_object_retention(Bucket=self.bucket, Key=name, Retention=retention)
        except S3_ERRORS as exc:
            raise self.upload_failure(name, exc) from None

    def put_bytes(self, key: str, data: bytes, *, replace: bool = False) -> None:
        """`If-None-Match: *` unless `replace`: S3 refuses to write over an object (412), and
        the writer's policy (`deploy/s3-policies/`) can demand it of every such write."""
        name = self.key(key)
        retention = self.object_lock.retention() if self.object_lock else None
        condition = {} if replace else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=name, Body=data, **condition, **_lock_headers(retention)
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise ObjectExists(
                    f"{self.describe()} holds {name} already: left as it was"
                ) from None
            raise self.upload_failure(name, exc) from None
        except S3_ERRORS as exc:
            raise self.upload_failure(name, exc) from None

    def get(self, key: str, limit: int, *, replaced: bool = False) -> Fetched | None:
        """The object, or its first version when it was written over since: what we write
        once is never replaced (`put_bytes`), so a later version is someone else's, and
        reported."""
        name = self.key(key)
        first, rewritten = (None, None) if replaced else self._first_version(name)
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=name, **({"VersionId": first} if first else {})
            )
            body = response["Body"]
            try:
                data = body.read(limit)
            finally:
                body.close()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING:
                return None
            raise self.failure("read", name, exc) from None
        except S3_ERRORS as exc:
            raise self.failure("read", name, exc) from None
        until = response.get("ObjectLockRetainUntilDate")
        return Fetched(
            data,
            response["LastModified"].astimezone(UTC),
            until and until.astimezone(UTC),
            rewritten,
        )

    def _first_version(self, name: str) -> tuple[str | None, str | None]:
        """In a bucket that keeps versions, the first version of `name` when there are more,
        and what says so; (None, None) when there is one (or the bucket keeps no versions)."""
        if not self.versions_visible:
            return None, None
        versions = [
            version
            for page in self._pages("list_object_versions", name)
            for version in page.get("Versions", [])
            if version["Key"] == name
        ]
        if len(versions) < 2:
            return None, None
        latest, first = versions[0], versions[-1]  # S3 lists a key's versions newest first
        return first["VersionId"], (
            f"s3://{self.bucket}/{name} was written over {len(versions) - 1} time(s), last at "
            f"{_shown_time(latest['LastModified'])}, after it was first written at "
            f"{_shown_time(first['LastModified'])}: possible tampering; its first version is read"
        )

    @cached_property
    def versions_visible(self) -> bool:
        """Whether the bucket keeps versions and these keys may list them (s3:GetBucketVersioning,
        s3:ListBucketVersions): then a written-over object is told from one written once."""
        try:
            return self.versioned
        except StoreError as exc:
            logger.warning("cannot tell written-over objects from others: %s", exc)
            return False

    @contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        name = self.key(key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
        except S3_ERRORS as exc:
            raise self.failure("read", name, exc) from None
        try:
            yield io.BufferedReader(_BodyReader(body, self, name), buffer_size=MIB)
        finally:
            body.close()

    def _pages(self, operation: str, prefix: str, **extra: Any) -> Iterator[dict]:
        try:
            paginator = self.client.get_paginator(operation)
            yield from paginator.paginate(Bucket=self.bucket, Prefix=prefix, **extra)
        except S3_ERRORS as exc:
            raise self.failure("listing", prefix, exc) from None

    def _objects(self, prefix: str) -> Iterator[dict]:
        for page in self._pages("list_objects_v2", prefix):
            yield from page.get("Contents", [])

    def _uploads(self, prefix: str) -> Iterator[dict]:
        """Multipart uploads begun and neither completed nor aborted."""
        for page in self._pages("list_multipart_uploads", prefix):
            yield from page.get("Uploads", [])

    def children(self, prefix: str) -> list[str]:
        """One listing of objects and one of open uploads, grouped by S3 itself (`Delimiter`);
        keys it returned ungrouped (as some S3-compatible stores do for uploads) count too."""
        under = self.key(prefix) + "/"
        names = set()
        for operation, items in (
            ("list_objects_v2", "Contents"),
            ("list_multipart_uploads", "Uploads"),
        ):
            for page in self._pages(operation, under, Delimiter="/"):
                found = [common["Prefix"] for common in page.get("CommonPrefixes", [])]
                found += [item["Key"] for item in page.get(items, [])]
                names.update(key[len(under) :].split("/", 1)[0] for key in found)
        names.discard("")
        return sorted(names)

    def files(self, prefix: str) -> list[str]:
        under = self.key(prefix) + "/"
        return sorted(
            item["Key"][len(under) :]
            for page in self._pages("list_objects_v2", under, Delimiter="/")
            for item in page.get("Contents", [])
        )

    def usage(self, prefix: str) -> int:
        """Current objects only: versions a lock keeps after a delete are the bucket's own
        (its lifecycle rules expire them)."""
        return sum(item["Size"] for item in self._objects(self.key(prefix) + "/"))

    def clock(self) -> datetime:
        """The `Date` the service answers a HEAD of the bucket with."""
        try:
            answered = self.client.head_bucket(Bucket=self.bucket)
        except S3_ERRORS as exc:
            raise self.failure("asking the time of", self.bucket, exc) from None
        said = answered["ResponseMetadata"]["HTTPHeaders"].get("date")
        return parsedate_to_datetime(said).astimezone(UTC) if said else datetime.now(UTC)

    def last_change(self, prefix: str) -> datetime | None:
        under = self.key(prefix) + "/"
        times = [item["LastModified"] for item in self._objects(under)]
        times += [upload["Initiated"] for upload in self._uploads(under)]
        return max(times).astimezone(UTC) if times else None

    @cached_property
    def versioned(self) -> bool:
        """Whether the bucket keeps versions (Object Lock needs it): deletes then remove each
        version, where a plain delete would only hide the data behind a delete marker."""
        try:
            status = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
        except S3_ERRORS as exc:
            raise self.failure("versioning lookup", self.bucket, exc) from None
        return status in ("Enabled", "Suspended")

    @cached_property
    def lockable(self) -> bool:
        """Whether the bucket has Object Lock at all (without it, nothing is ever locked)."""
        try:
            found = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == NO_LOCK_CONFIGURATION:
                return False
            raise self.failure("Object Lock lookup", self.bucket, exc) from None
        except S3_ERRORS as exc:
            raise self.failure("Object Lock lookup", self.bucket, exc) from None
        return found.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    def _stored(self, under: str) -> list[dict[str, str]]:
        """Every stored thing below `under`, as a delete or a HEAD names it: each version and
        delete marker in a versioned bucket, each object otherwise."""
        if not self.versioned:
            return [{"Key": item["Key"]} for item in self._objects(under)]
        return [
            {"Key": item["Key"], "VersionId": item["VersionId"]}
            for page in self._pages("list_object_versions", under)
            for item in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]

    def retained_until(self, prefix: str) -> datetime | None:
        if not self.lockable:
            return None
        now, latest = datetime.now(UTC), None
        for stored in self._stored(self.key(prefix) + "/"):
            try:
                head = self.client.head_object(Bucket=self.bucket, **stored)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in (*MISSING, "405"):
                    continue  # a delete marker, or gone meanwhile: nothing to protect
                raise self.failure("retention lookup", stored["Key"], exc) from None
            except S3_ERRORS as exc:
                raise self.failure("retention lookup", stored["Key"], exc) from None
            if head.get("ObjectLockLegalHoldStatus") == "ON":
                return LEGAL_HOLD  # held until someone lifts it: no date to wait for
            until = head.get("ObjectLockRetainUntilDate")
            if until and until > now and (latest is None or until > latest):
                latest = until.astimezone(UTC)
        return latest

    def delete(self, key: str) -> None:
        name = self.key(key)
        if self.versioned:  # each version; none there, nothing to do (not a delete marker)
            self._delete([v for v in self._stored(name) if v["Key"] == name], name)
        else:
            self._delete([{"Key": name}], name)

    def delete_prefix(self, prefix: str) -> None:
        under = self.key(prefix) + "/"
        self._delete(self._stored(under), under)
        try:
            for upload in list(self._uploads(under)):
                self.deleter.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
        except S3_ERRORS as exc:
            raise self.failure("delete", under, exc) from None

    def _delete(self, stored: list[dict[str, str]], what: str) -> None:
        """Delete one object (or version) at a time: a snapshot holds a handful, and each
        request is then authorized on its own key, as `s3:DeleteObjectVersion` is granted.
        The first object S3 refuses (locked, no permission) fails the call."""
        for item in stored:
            try:
                self.deleter.delete_object(Bucket=self.bucket, **item)
            except S3_ERRORS as exc:
                raise self.failure("delete", item["Key"], exc) from None


class _CopyRefused(Exception):
    """The service refused to copy between the two buckets (the keys cannot read the other)."""


def _shown_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _transfer(size: int) -> TransferConfig:
    """Multipart in parts that keep an object of `size` bytes under S3's 10,000 parts."""
    part_size = part_size_for(size)
    return TransferConfig(
        multipart_threshold=part_size,
        multipart_chunksize=part_size,
        max_concurrency=UPLOAD_CONCURRENCY,
    )


def _lock_headers(retention: dict[str, Any] | None) -> dict[str, Any]:
    """An upload's Object Lock headers for `retention` (none without it)."""
    if retention is None:
        return {}
    return {
        "ObjectLockMode": retention["Mode"],
        "ObjectLockRetainUntilDate": retention["RetainUntilDate"],
    }


class _BodyReader(io.RawIOBase):
    """An S3 response body as a raw stream whose read errors say which object failed."""

    def __init__(self, body: BinaryIO, backend: S3Backend, key: str):
        self._body = body
        self._backend = backend
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            data = self._body.read(len(buffer))
        except S3_ERRORS as exc:
            raise self._backend.failure("read", self._key, exc) from None
        buffer[: len(data)] = data
        return len(data)
