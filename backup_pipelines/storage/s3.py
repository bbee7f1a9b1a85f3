"""Objects in S3 or an S3-compatible store (MinIO, Spaces), through boto3.

Files go up as multipart uploads from the staged file, never through memory
whole: the part size grows with the file so the 10,000-part limit is never
reached. An upload that fails is aborted by boto3's transfer manager; when
the connection is gone for that too, the open upload stays listed under its
prefix (`children`, `last_change`) until `delete_prefix` aborts it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from backup_pipelines.errors import StoreError
from backup_pipelines.redaction import redact
from backup_pipelines.storage import Backend, Fetched, key_parts

MIB = 1 << 20
MIN_PART_SIZE = 8 * MIB
MAX_PARTS = 10_000
PARTS_HEADROOM = 9_000
DELETE_BATCH = 1_000
UPLOAD_CONCURRENCY = 4
S3_ERRORS = (BotoCoreError, ClientError, Boto3Error)
MISSING = ("NoSuchKey", "404")


def part_size_for(size: int) -> int:
    """Parts of at least 8 MiB, growing so a file never needs more than ~9,000 parts."""
    return max(MIN_PART_SIZE, math.ceil(size / PARTS_HEADROOM / MIB) * MIB)


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
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._secrets = (access_key, secret_key)
        self.client = boto3.session.Session().client(
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

    def key(self, key: str) -> str:
        """`<prefix>/<key>`: the object's name in the bucket."""
        return "/".join(part for part in (self.prefix, *key_parts(key)) if part)

    def location(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{self.key(prefix)}/"

    def failure(self, action: str, key: str, exc: Exception) -> StoreError:
        reason = redact(" ".join(str(exc).split()), self._secrets)
        return StoreError(f"S3 {action} of {key} failed at {self.describe()}: {reason}")

    def put_file(self, key: str, path: Path) -> None:
        name = self.key(key)
        part_size = part_size_for(path.stat().st_size)
        transfer = TransferConfig(
            multipart_threshold=part_size,
            multipart_chunksize=part_size,
            max_concurrency=UPLOAD_CONCURRENCY,
        )
        try:
            self.client.upload_file(str(path), self.bucket, name, Config=transfer)
        except S3_ERRORS as exc:
            raise self.failure("upload", name, exc) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        name = self.key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=name, Body=data)
        except S3_ERRORS as exc:
            raise self.failure("upload", name, exc) from None

    def get(self, key: str, limit: int) -> Fetched | None:
        name = self.key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=name)
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
        return Fetched(data, response["LastModified"].astimezone(UTC))

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

    def last_change(self, prefix: str) -> datetime | None:
        under = self.key(prefix) + "/"
        times = [item["LastModified"] for item in self._objects(under)]
        times += [upload["Initiated"] for upload in self._uploads(under)]
        return max(times).astimezone(UTC) if times else None

    def delete(self, key: str) -> None:
        name = self.key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)
        except S3_ERRORS as exc:
            raise self.failure("delete", name, exc) from None

    def delete_prefix(self, prefix: str) -> None:
        under = self.key(prefix) + "/"
        keys = [item["Key"] for item in self._objects(under)]
        uploads = list(self._uploads(under))
        try:
            for start in range(0, len(keys), DELETE_BATCH):
                batch = [{"Key": key} for key in keys[start : start + DELETE_BATCH]]
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            for upload in uploads:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
        except S3_ERRORS as exc:
            raise self.failure("delete", under, exc) from None


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
