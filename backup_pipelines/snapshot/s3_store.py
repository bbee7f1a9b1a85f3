"""Snapshots in S3 or an S3-compatible store (MinIO, Spaces), through boto3.

Artifacts go up as multipart uploads from the staged files, never through
memory whole: the part size grows with the file so the 10,000-part limit is
never reached, and boto3's transfer manager aborts a failed multipart
upload so no partial object is left. The manifest goes up last.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import BinaryIO

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from backup_pipelines.errors import StoreError
from backup_pipelines.redaction import redact
from backup_pipelines.snapshot.manifest import MANIFEST_NAME, SNAPSHOT_ID_PATTERN, utc_now
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot

logger = logging.getLogger(__name__)

MIB = 1 << 20
MIN_PART_SIZE = 8 * MIB
MAX_PARTS = 10_000
PARTS_HEADROOM = 9_000
DELETE_BATCH = 1_000
UPLOAD_CONCURRENCY = 4
S3_ERRORS = (BotoCoreError, ClientError, Boto3Error)


def part_size_for(size: int) -> int:
    """Parts of at least 8 MiB, growing so a file never needs more than ~9,000 parts."""
    return max(MIN_PART_SIZE, math.ceil(size / PARTS_HEADROOM / MIB) * MIB)


class S3SnapshotStore(SnapshotStore):
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
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._secrets = (access_key, secret_key)
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(
                retries={"mode": "standard", "max_attempts": max_attempts},
                connect_timeout=10,
                read_timeout=120,
                s3={"addressing_style": "path"},
                # S3-compatible stores differ in which checksums they accept;
                # integrity is proven by our own sha256 on every read instead.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/ at {self.endpoint_url or 'AWS'}"

    def _key(self, source: str, snapshot_id: str, name: str = "") -> str:
        return "/".join(part for part in (self.prefix, source, snapshot_id, name) if part)

    def location(self, source: str, snapshot_id: str) -> str:
        return f"s3://{self.bucket}/{self._key(source, snapshot_id)}/"

    def failure(self, action: str, exc: Exception) -> StoreError:
        reason = redact(" ".join(str(exc).split()), self._secrets)
        return StoreError(f"S3 {action} failed at {self.describe()}: {reason}")

    def commit(self, staged: StagedSnapshot) -> StoredSnapshot:
        if self.read_manifest(staged.source, staged.snapshot_id) is not None:
            raise StoreError(f"{staged.source} snapshot {staged.snapshot_id} already exists")
        uploaded: list[str] = []
        try:
            for entry in staged.files:
                key = self._key(staged.source, staged.snapshot_id, entry.name)
                part_size = part_size_for(entry.size)
                self._client.upload_file(
                    str(staged.path_of(entry)),
                    self.bucket,
                    key,
                    Config=TransferConfig(
                        multipart_threshold=part_size,
                        multipart_chunksize=part_size,
                        max_concurrency=UPLOAD_CONCURRENCY,
                    ),
                )
                uploaded.append(key)
            raw = staged.manifest(finished_at=utc_now()).to_bytes()
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._key(staged.source, staged.snapshot_id, MANIFEST_NAME),
                Body=raw,
                ContentType="application/json",
            )
        except S3_ERRORS as exc:
            self._delete_keys(uploaded, best_effort=True)
            raise self.failure(
                f"upload of {staged.source} snapshot {staged.snapshot_id}", exc
            ) from None
        return StoredSnapshot.from_manifest_bytes(
            raw, self.location(staged.source, staged.snapshot_id)
        )

    def _keys_under(self, prefix: str) -> Iterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def snapshot_ids(self, source: str) -> list[str]:
        prefix = self._key(source, "") + "/"
        try:
            keys = list(self._keys_under(prefix))
        except S3_ERRORS as exc:
            raise self.failure(f"listing of {source} snapshots", exc) from None
        suffix = "/" + MANIFEST_NAME
        return [
            key[len(prefix) : -len(suffix)]
            for key in keys
            if key.endswith(suffix) and key[len(prefix) :].count("/") == 1
        ]

    def read_manifest(self, source: str, snapshot_id: str) -> StoredSnapshot | None:
        key = self._key(source, snapshot_id, MANIFEST_NAME)
        try:
            raw = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self.failure(f"read of {key}", exc) from None
        except S3_ERRORS as exc:
            raise self.failure(f"read of {key}", exc) from None
        try:
            return StoredSnapshot.from_manifest_bytes(raw, self.location(source, snapshot_id))
        except ValidationError:
            logger.warning("ignoring s3://%s/%s: not a valid snapshot manifest", self.bucket, key)
            return None

    @contextmanager
    def open_file(self, source: str, snapshot_id: str, name: str) -> Iterator[BinaryIO]:
        key = self._key(source, snapshot_id, name)
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except S3_ERRORS as exc:
            raise self.failure(f"read of {key}", exc) from None
        try:
            yield io.BufferedReader(_BodyReader(body, self, key), buffer_size=MIB)
        finally:
            body.close()

    def incomplete(self, source: str) -> list[tuple[str, datetime]]:
        prefix = self._key(source, "") + "/"
        latest: dict[str, datetime] = {}
        complete: set[str] = set()
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    snapshot_id, _, name = item["Key"][len(prefix) :].partition("/")
                    if not SNAPSHOT_ID_PATTERN.match(snapshot_id):
                        continue
                    if name == MANIFEST_NAME:
                        complete.add(snapshot_id)
                    modified = item["LastModified"]
                    latest[snapshot_id] = max(modified, latest.get(snapshot_id, modified))
        except S3_ERRORS as exc:
            raise self.failure(f"listing of {source} snapshots", exc) from None
        return [(sid, when) for sid, when in latest.items() if sid not in complete]

    def delete(self, source: str, snapshot_id: str) -> None:
        try:
            self._client.delete_object(
                Bucket=self.bucket, Key=self._key(source, snapshot_id, MANIFEST_NAME)
            )
            self._delete_keys(list(self._keys_under(self._key(source, snapshot_id) + "/")))
        except S3_ERRORS as exc:
            raise self.failure(f"delete of {source} snapshot {snapshot_id}", exc) from None

    def _delete_keys(self, keys: list[str], *, best_effort: bool = False) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + DELETE_BATCH]]
            try:
                self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except S3_ERRORS:
                if not best_effort:
                    raise
                logger.warning("could not remove %d partial objects from S3", len(batch))


class _BodyReader(io.RawIOBase):
    """An S3 response body as a raw stream whose read errors say which object failed."""

    def __init__(self, body: BinaryIO, store: S3SnapshotStore, key: str):
        self._body = body
        self._store = store
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            data = self._body.read(len(buffer))
        except S3_ERRORS as exc:
            raise self._store.failure(f"read of {self._key}", exc) from None
        buffer[: len(data)] = data
        return len(data)
