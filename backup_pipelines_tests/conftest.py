"""Fixtures for real services: moto's S3 server over loopback HTTP, stores, settings env."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests

from backup_pipelines.snapshot.local_store import LocalSnapshotStore
from backup_pipelines.snapshot.manifest import MANIFEST_NAME
from backup_pipelines.snapshot.s3_store import S3SnapshotStore
from backup_pipelines.snapshot.staging import stage
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot

# Transient failures are retried at once in tests (30, 60, 120 s in production); set before
# backup_pipelines.assets is imported, as its RetryPolicy is built at import.
os.environ["BACKUP_RETRY_DELAY_S"] = "0"

S3_ACCESS_KEY = "test-access-key"
S3_SECRET_KEY = "test-secret-key-never-shown"
RUN_ID = "5f0e9a1c-7d2b-4c11-9e8a-0b1c2d3e4f50"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 in server mode, in its own process (it keeps objects in memory)."""
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(endpoint)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def s3_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
    )


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    bucket = f"backups-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    return bucket


def make_s3_store(endpoint: str, bucket: str, **kwargs) -> S3SnapshotStore:
    return S3SnapshotStore(
        bucket=bucket,
        access_key=S3_ACCESS_KEY,
        secret_key=S3_SECRET_KEY,
        endpoint_url=endpoint,
        **kwargs,
    )


@pytest.fixture
def staging_dir(tmp_path: Path) -> Path:
    return tmp_path / "artifacts" / ".staging"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path) -> SnapshotStore:
    """Each test using it runs once on the local store and once on S3 (moto)."""
    if request.param == "local":
        return LocalSnapshotStore(tmp_path / "artifacts")
    endpoint = request.getfixturevalue("s3_endpoint")
    return make_s3_store(endpoint, request.getfixturevalue("s3_bucket"))


@pytest.fixture
def backup_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean BACKUP_* environment with a local store under tmp_path."""
    for name in list(os.environ):
        if name.startswith("BACKUP_") or name == "DOCUMENTS_STORAGE_ROOT":
            monkeypatch.delenv(name)
    artifacts = tmp_path / "artifacts"
    monkeypatch.setenv("BACKUP_ARTIFACTS_DIR", str(artifacts))
    return artifacts


@pytest.fixture(params=["local", "s3"])
def store_env(request, backup_env) -> str:
    """Run the test with the BACKUP_* environment on the local store, then on S3 (moto)."""
    if request.param == "s3":
        request.getfixturevalue("s3_env")
    return request.param


@pytest.fixture
def s3_env(backup_env: Path, monkeypatch: pytest.MonkeyPatch, s3_endpoint: str, s3_bucket: str):
    """The BACKUP_* environment pointing at a fresh moto bucket."""
    monkeypatch.setenv("BACKUP_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("BACKUP_S3_BUCKET", s3_bucket)
    monkeypatch.setenv("BACKUP_S3_ACCESS_KEY", S3_ACCESS_KEY)
    monkeypatch.setenv("BACKUP_S3_SECRET_KEY", S3_SECRET_KEY)
    return make_s3_store(s3_endpoint, s3_bucket)


def commit_snapshot(
    store: SnapshotStore,
    staging_dir: Path,
    artifacts: dict[str, bytes],
    *,
    source: str = "postgres",
    run_id: str = RUN_ID,
    **stage_options,
) -> StoredSnapshot:
    """Stage `artifacts` (name → plain bytes) as one snapshot and commit it."""
    with stage(staging_dir, source, run_id, **stage_options) as staged:
        for name, data in artifacts.items():
            staged.add_stream(name, [data[i : i + 65536] for i in range(0, len(data), 65536)])
        staged.stats["artifacts"] = len(artifacts)
    try:
        return store.commit(staged)
    finally:
        staged.discard()


def flip_byte(
    store: SnapshotStore, snapshot_id: str, name: str, offset: int, source: str = "postgres"
) -> None:
    """Damage one stored byte in place, on whichever store."""
    with store.open_file(source, snapshot_id, name) as stored:
        content = bytearray(stored.read())
    content[offset] ^= 0x01
    if isinstance(store, LocalSnapshotStore):
        (store.root / source / snapshot_id / name).write_bytes(content)
    else:
        store._client.put_object(
            Bucket=store.bucket, Key=store._key(source, snapshot_id, name), Body=bytes(content)
        )


def read_manifest_bytes(store: SnapshotStore, source: str, snapshot_id: str) -> bytes:
    if isinstance(store, LocalSnapshotStore):
        return (store.root / source / snapshot_id / MANIFEST_NAME).read_bytes()
    key = store._key(source, snapshot_id, MANIFEST_NAME)
    return store._client.get_object(Bucket=store.bucket, Key=key)["Body"].read()


def replace_manifest(store: SnapshotStore, source: str, snapshot_id: str, raw: bytes) -> None:
    """Overwrite a stored manifest, as a tampering hand or a damaged disk would."""
    if isinstance(store, LocalSnapshotStore):
        (store.root / source / snapshot_id / MANIFEST_NAME).write_bytes(raw)
    else:
        key = store._key(source, snapshot_id, MANIFEST_NAME)
        store._client.put_object(Bucket=store.bucket, Key=key, Body=raw)
