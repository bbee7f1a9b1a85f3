"""Fixtures for real services (moto's S3 server over loopback HTTP, stores, the settings
environment) and the helpers every test module shares: running a job of the real
definitions, and asserting a run failed once, at once, naming what to fix.

The suite runs on every core (pytest-xdist): each worker has its own moto server and its
own RabbitMQ vhost, and every test its own directories, database names and ports, so no
test sees another's events, requests or files."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pika
import pytest
import requests
from dagster import DagsterInstance, ExecuteInProcessResult
from pyrage import x25519

from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines.dagster_defs.definition_names import (
    VERIFICATION_JOB,
    backup_job_name,
    backup_step_key,
    verification_asset_key,
)
from backup_pipelines.dagster_defs.verification_location import build_verification
from backup_pipelines.events.broker import DEAD_LETTER_QUEUE, REQUESTS_QUEUE
from backup_pipelines.processes import free_loopback_port as free_port
from backup_pipelines.runtime import Runtime, load_runtime
from backup_pipelines.snapshot.manifest import MANIFEST_NAME
from backup_pipelines.snapshot.staging import stage
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot
from backup_pipelines.sources.source import Source
from backup_pipelines.storage.local import LocalBackend
from backup_pipelines.storage.s3 import S3Backend
from backup_pipelines_tests.broker import scratch_vhost, vhost_url
from backup_pipelines_tests.postgres_fixtures import (
    create_rich_database,
    scratch_databases,
    unique_name,
)

SECONDS_BY_MARK = {"e2e": 20.0, "slow": 8.0}
"""Roughly how long an end-to-end or a slow test runs; any other takes about half a second."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first. `make test` spreads the suite over workers a module at a
    time (`--dist loadfile --no-loadscope-reorder`, so a module's fixtures, as the end-to-end
    stack, start once, in this order); a long module handed out last would run alone at the
    end. A module's tests keep their order."""

    def seconds(item: pytest.Item) -> float:
        marks = [
            SECONDS_BY_MARK[mark.name]
            for mark in item.iter_markers()
            if mark.name in SECONDS_BY_MARK
        ]
        return max(marks, default=0.5)

    modules: dict[Path, float] = {}
    for item in items:
        modules[item.path] = modules.get(item.path, 0) + seconds(item)
    items.sort(key=lambda item: -modules[item.path])


S3_ACCESS_KEY = "test-access-key"
S3_SECRET_KEY = "test-secret-key-never-shown"
RUN_ID = "5f0e9a1c-7d2b-4c11-9e8a-0b1c2d3e4f50"


def wait_for_http(url: str, timeout_s: float = 30) -> None:
    """Until `url` answers: a server still importing (a fresh machine compiles its modules on
    first start) may accept the connection and answer seconds later."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=5)
            return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


def wait_for_port(port: int, timeout_s: float = 30) -> None:
    """Until something listens on 127.0.0.1:`port`, without sending it a request."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


class MotoServer:
    """moto's S3 in server mode, in its own process (it keeps objects in memory)."""

    def __init__(self) -> None:
        port = free_port()
        moto = Path(sys.executable).with_name("moto_server")
        self.process = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Gone with everything it held, as a store whose service died."""
        self.process.terminate()
        self.process.wait(timeout=10)


@contextmanager
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    try:
        wait_for_http(server.endpoint)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """This worker's moto server."""
    with moto_server() as server:
        yield server.endpoint


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


def make_s3_store(endpoint: str, bucket: str, **kwargs) -> SnapshotStore:
    return SnapshotStore(
        S3Backend(
            bucket=bucket,
            access_key=S3_ACCESS_KEY,
            secret_key=S3_SECRET_KEY,
            endpoint_url=endpoint,
            **kwargs,
        )
    )


def make_local_store(root: Path) -> SnapshotStore:
    return SnapshotStore(LocalBackend(root))


@pytest.fixture
def staging_dir(tmp_path: Path) -> Path:
    return tmp_path / "artifacts" / ".staging"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path) -> SnapshotStore:
    """Each test using it runs once on the local store and once on S3 (moto)."""
    if request.param == "local":
        return make_local_store(tmp_path / "artifacts")
    endpoint = request.getfixturevalue("s3_endpoint")
    return make_s3_store(endpoint, request.getfixturevalue("s3_bucket"))


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """This worker's own vhost on the machine's RabbitMQ, as `BACKUP_RABBITMQ_URL` takes it:
    events and `backup.requests` of the other workers never reach it."""
    with scratch_vhost("bp_tests") as vhost:
        yield vhost_url(vhost)


@pytest.fixture
def broker_definitions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Held by a test that imports definitions into the machine's RabbitMQ as a whole, or
    deletes a vhost there and restores it: another worker's import of a whole snapshot
    would bring back what this one deleted."""
    lock = tmp_path_factory.getbasetemp().parent / "machine-rabbitmq-definitions.lock"
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


@pytest.fixture
def requests_channel(broker_url):
    """This worker's backup.requests and its dead-letter queue, emptied for the test."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    for queue in (REQUESTS_QUEUE, DEAD_LETTER_QUEUE):
        channel.queue_declare(queue, durable=True)
        channel.queue_purge(queue)
    yield channel
    connection.close()


@pytest.fixture
def backup_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, broker_url: str) -> Path:
    """A clean BACKUP_* environment with a local store under tmp_path, and this worker's
    vhost for events."""
    for name in list(os.environ):
        if name.startswith("BACKUP_") or name == "DOCUMENTS_STORAGE_ROOT":
            monkeypatch.delenv(name)
    artifacts = tmp_path / "artifacts"
    monkeypatch.setenv("BACKUP_ARTIFACTS_DIR", str(artifacts))
    monkeypatch.setenv("BACKUP_RABBITMQ_URL", broker_url)
    monkeypatch.setenv("BACKUP_RETRY_DELAY_S", "0")  # 30, 60, 120 s in production
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


def object_key(source: str, snapshot_id: str, name: str) -> str:
    return f"{source}/{snapshot_id}/{name}"


def flip_byte(
    store: SnapshotStore, snapshot_id: str, name: str, offset: int, source: str = "postgres"
) -> None:
    """Damage one stored byte, as a failing disk or a tampering hand would, on any store."""
    with store.open_file(source, snapshot_id, name) as stored:
        content = bytearray(stored.read())
    content[offset] ^= 0x01
    store.backend.put_bytes(object_key(source, snapshot_id, name), bytes(content), replace=True)


def read_manifest_bytes(store: SnapshotStore, source: str, snapshot_id: str) -> bytes:
    fetched = store.backend.get(object_key(source, snapshot_id, MANIFEST_NAME), 1 << 30)
    assert fetched is not None
    return fetched.data


def replace_manifest(store: SnapshotStore, source: str, snapshot_id: str, raw: bytes) -> None:
    """Overwrite a stored manifest, as a tampering hand or a damaged disk would."""
    store.backend.put_bytes(object_key(source, snapshot_id, MANIFEST_NAME), raw, replace=True)


PASSWORD = "pw-never-shown"
SOURCE_DSN = f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/postgres"


@pytest.fixture
def source_db(backup_env, monkeypatch) -> Iterator[str]:
    """A rich database, and the environment set to back up only it (with a password in the DSN)."""
    name = unique_name("bp_source")
    monkeypatch.setenv("BACKUP_POSTGRES_BACKUP_DSN", SOURCE_DSN)
    monkeypatch.setenv("BACKUP_POSTGRES_DATABASES", name)
    with scratch_databases(name):
        create_rich_database(name)
        yield name


def age_identity_file(path: Path) -> tuple[str, Path]:
    """A new age key: its public recipient, and its identity written to `path`."""
    identity = x25519.Identity.generate()
    path.write_text(f"# test key\n{identity}\n")
    path.chmod(0o600)
    return str(identity.to_public()), path


def runtime_from_env() -> Runtime:
    """What the command and the code location build from this test's environment."""
    return load_runtime()


@pytest.fixture
def sources(backup_env) -> dict[str, Source]:
    """Every registered source with its default settings, as retention walks them."""
    return runtime_from_env().sources


def store_from_env() -> SnapshotStore:
    return runtime_from_env().store


def run_job(name: str, instance: DagsterInstance | None = None, **kwargs) -> ExecuteInProcessResult:
    """A job of the real definitions, built from this test's environment, run as a schedule
    would run it."""
    defs = build_definitions(runtime_from_env())
    return defs.resolve_job_def(name).execute_in_process(
        instance=instance or DagsterInstance.ephemeral(), raise_on_error=False, **kwargs
    )


def run_backup(source: str, instance: DagsterInstance | None = None) -> ExecuteInProcessResult:
    return run_job(backup_job_name(source), instance)


def timed_backup(source: str) -> tuple[ExecuteInProcessResult, float]:
    """A backup run as `run_backup` runs it, and the seconds it took, retries included."""
    started = time.monotonic()
    result = run_backup(source)
    return result, time.monotonic() - started


def step_failures(result: ExecuteInProcessResult) -> list[str]:
    """What each failed step said, in the order they failed (a retried step fails again)."""
    return [
        str(event.step_failure_data.user_failure_data.description)
        for event in result.all_events
        if event.is_step_failure
    ]


def run_verification(
    source: str, instance: DagsterInstance | None = None
) -> ExecuteInProcessResult:
    """The source's verification asset of the verification location, built from this test's
    environment, run as its schedule runs it."""
    defs = build_verification(runtime_from_env())
    return defs.resolve_job_def(VERIFICATION_JOB).execute_in_process(
        instance=instance or DagsterInstance.ephemeral(),
        asset_selection=[verification_asset_key(source)],
        raise_on_error=False,
    )


def verification_of(result: ExecuteInProcessResult, source: str) -> dict | None:
    """What the verification recorded, or None when it materialized nothing (skipped)."""
    found = result.asset_materializations_for_node(f"{source}_verification")
    return {k: v.value for k, v in found[0].metadata.items()} if found else None


def metadata_of(result: ExecuteInProcessResult, source: str) -> dict:
    """The values of the one materialization of `source`'s backup in `result`."""
    [materialization] = result.asset_materializations_for_node(backup_step_key(source))
    return {key: value.value for key, value in materialization.metadata.items()}


def checks_of(result: ExecuteInProcessResult) -> dict:
    return {check.check_name: check for check in result.get_asset_check_evaluations()}


def failed_at_once(result: ExecuteInProcessResult, *secrets: str) -> str:
    """The failure description of a run that failed in one step, without a retry (a wrong
    password, a missing database), after checking no secret reached it or the run's log."""
    assert not result.success
    failures = step_failures(result)
    assert len(failures) == 1 and not any(e.is_step_up_for_retry for e in result.all_events)
    message = failures[0]
    every_log = " ".join(str(event.message) for event in result.all_events)
    for secret in secrets:
        assert secret not in message + every_log
    return message
