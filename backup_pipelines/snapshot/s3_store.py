"""Snapshots in S3 or an S3-compatible store (MinIO, Spaces), through boto3.

Artifacts go up as multipart uploads from the staged files, never through
memory whole: the part size grows with the file so the 10,000-part limit is
never reached. A failed multipart upload is aborted (by boto3's transfer
manager, then once more here); when the connection is gone for that too,
the open upload is listed as an interrupted attempt and `prune` aborts it a
day later. The manifest goes up last.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import BinaryIO

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from backup_pipelines.errors import StoreError
from backup_pipelines.redaction import redact
from backup_pipelines.snapshot.manifest import MANIFEST_NAME, utc_now
from backup_pipelines.snapshot.names import is_snapshot_id
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.snapshot.store import (
    MAX_MANIFEST_BYTES,
    Listed,
    SnapshotStore,
    StoredSnapshot,
    parse_manifest,
)

logger = logging.getLogger(__name__)

MIB = 1 << 20
MIN_PART_SIZE = 8 * MIB
MAX_PARTS = 10_000
PARTS_HEADROOM = 9_000
DELETE_BATCH = 1_000
UPLOAD_CONCURRENCY = 4
S3_ERRORS = (BotoCoreError, ClientError, Boto3Error)
_EPOCH = datetime.fromtimestamp(0, UTC)


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

    def _key(self, *parts: str) -> str:
        """`<prefix>/<source>/<snapshot_id>/<name>`: every part was checked by the caller."""
        return "/".join(part for part in (self.prefix, *parts) if part)

    def location(self, source: str, snapshot_id: str) -> str:
        return f"s3://{self.bucket}/{self._key(source, snapshot_id)}/"

    def failure(self, action: str, exc: Exception) -> StoreError:
        reason = redact(" ".join(str(exc).split()), self._secrets)
        return StoreError(f"S3 {action} failed at {self.describe()}: {reason}")

    def commit(self, staged: StagedSnapshot) -> StoredSnapshot:
        """Upload every artifact, then the manifest; any S3 failure is this upload's failure
        (what a `backup.failed` event reports), never a secondary error of the check first."""
        manifest_key = self._key(staged.source, staged.snapshot_id, MANIFEST_NAME)
        uploaded: list[str] = []
        try:
            if self._exists(manifest_key):
                raise StoreError(f"{staged.source} snapshot {staged.snapshot_id} already exists")
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
                Key=manifest_key,
                Body=raw,
                ContentType="application/json",
            )
        except S3_ERRORS as exc:
            self._clean_failed_commit(staged, uploaded)
            raise self.failure(
                f"upload of {staged.source} snapshot {staged.snapshot_id}", exc
            ) from None
        location = self.location(staged.source, staged.snapshot_id)
        return parse_manifest(raw, staged.source, staged.snapshot_id, location)

    def _exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return False
            raise
        return True

    def _clean_failed_commit(self, staged: StagedSnapshot, uploaded: list[str]) -> None:
        """Best effort: the objects already up and any multipart upload left open.

        With the connection gone this fails too; `prune` then finds the
        attempt (objects or open uploads, no manifest) and removes it a day later.
        """
        try:
            self._delete_keys(uploaded)
            self._abort_uploads(self._key(staged.source, staged.snapshot_id) + "/")
        except S3_ERRORS:
            logger.warning(
                "could not clean up the failed upload of %s/%s; prune removes it after 24 h",
                staged.source,
                staged.snapshot_id,
            )

    def _keys_under(self, prefix: str) -> Iterator[dict]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _uploads_under(self, prefix: str) -> Iterator[dict]:
        """Multipart uploads begun and neither completed nor aborted."""
        paginator = self._client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Uploads", [])

    def _list(self, source: str) -> dict[str, Listed]:
        prefix = self._key(source) + "/"
        latest: dict[str, datetime] = {}
        complete: set[str] = set()
        try:
            for item in self._keys_under(prefix):
                snapshot_id, _, name = item["Key"][len(prefix) :].partition("/")
                if is_snapshot_id(snapshot_id):
                    if name == MANIFEST_NAME:
                        complete.add(snapshot_id)
                    latest[snapshot_id] = max(item["LastModified"], latest.get(snapshot_id, _EPOCH))
        except S3_ERRORS as exc:
            raise self.failure(f"listing of {source} snapshots", exc) from None
        return {
            sid: Listed(sid, sid in complete, modified.astimezone(UTC))
            for sid, modified in latest.items()
        }

    def incomplete(self, source: str) -> list[tuple[str, datetime]]:
        """Attempts without a manifest, those whose only trace is an open multipart upload too."""
        listed = self._list(source)
        complete = {sid for sid, entry in listed.items() if entry.has_manifest}
        found = {sid: entry.modified for sid, entry in listed.items() if sid not in complete}
        prefix = self._key(source) + "/"
        try:
            for upload in self._uploads_under(prefix):
                snapshot_id = upload["Key"][len(prefix) :].partition("/")[0]
                if is_snapshot_id(snapshot_id) and snapshot_id not in complete:
                    began = upload["Initiated"].astimezone(UTC)
                    found[snapshot_id] = max(began, found.get(snapshot_id, began))
        except S3_ERRORS as exc:
            raise self.failure(f"listing of {source} uploads", exc) from None
        return sorted(found.items())

    def _manifest_bytes(self, source: str, snapshot_id: str) -> bytes | None:
        key = self._key(source, snapshot_id, MANIFEST_NAME)
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                return body.read(MAX_MANIFEST_BYTES + 1)
            finally:
                body.close()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self.failure(f"read of {key}", exc) from None
        except S3_ERRORS as exc:
            raise self.failure(f"read of {key}", exc) from None

    @contextmanager
    def _open(self, source: str, snapshot_id: str, name: str) -> Iterator[BinaryIO]:
        key = self._key(source, snapshot_id, name)
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except S3_ERRORS as exc:
            raise self.failure(f"read of {key}", exc) from None
        try:
            yield io.BufferedReader(_BodyReader(body, self, key), buffer_size=MIB)
        finally:
            body.close()

    def _remove(self, source: str, snapshot_id: str) -> None:
        prefix = self._key(source, snapshot_id) + "/"
        try:
            self._client.delete_object(Bucket=self.bucket, Key=prefix + MANIFEST_NAME)
            self._delete_keys([item["Key"] for item in self._keys_under(prefix)])
            self._abort_uploads(prefix)
        except S3_ERRORS as exc:
            raise self.failure(f"delete of {source} snapshot {snapshot_id}", exc) from None

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + DELETE_BATCH]]
            self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )

    def _abort_uploads(self, prefix: str) -> None:
        for upload in list(self._uploads_under(prefix)):
            self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )


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
