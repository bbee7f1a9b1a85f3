"""With age recipients set, no plaintext of the data rests on the backup host's disk: not in
staging, not in the store, not in a restore's, drill's or deep verify's scratch space."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_pipelines.cli import main
from backup_pipelines_tests.conftest import age_identity_file, run_backup
from backup_pipelines_tests.consul_double import MANAGEMENT, ConsulDouble
from backup_pipelines_tests.postgres_fixtures import database_state, scratch_databases, unique_name
from backup_pipelines_tests.redis_fixtures import (
    assert_same_data,
    fill_crm_data,
    redis_process,
    server_state,
)
from backup_pipelines_tests.test_consul import kv_of
from backup_pipelines_tests.test_postgres import target_dsn
from backup_pipelines_tests.test_rabbitmq import MANAGEMENT as RABBITMQ
from backup_pipelines_tests.test_rabbitmq import admin, vhost_state
from backup_pipelines_tests.test_redis import port_of

CONSUL_TOKEN = "consul-token-never-shown"
AGE_HEADER = b"age-encryption.org/v1"


def plaintext_kind(head: bytes) -> str | None:
    """What plain data a file's first bytes are, if they are any we back up."""
    if head.startswith(b"PGDMP"):
        return "a pg_dump archive"
    if head.startswith(b"REDIS"):
        return "an RDB"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip stream (a Consul snapshot)"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd without age"
    if b'"rabbit_version"' in head or b"PostgreSQL database cluster dump" in head:
        return "RabbitMQ definitions or globals.sql"
    return None


class PlaintextWatch:
    """Scans `roots` over and over while it runs, reading the first 4 KiB of every file
    each time it has grown, and keeps every file that was plaintext at some moment."""

    def __init__(self, *roots: Path):
        self.roots = roots
        self.plaintext: dict[str, str] = {}
        self.encrypted: set[str] = set()
        self._sizes: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PlaintextWatch:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self._scan()

    def _watch(self) -> None:
        while not self._stop.wait(0.001):
            self._scan()

    def _scan(self) -> None:
        for root in self.roots:
            for folder, _, files in os.walk(root):
                for name in files:
                    self._look_at(os.path.join(folder, name))

    def _look_at(self, path: str) -> None:
        try:
            with open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if self._sizes.get(path) == size:
                    return
                self._sizes[path] = size
                head = file.read(4096)
        except OSError:
            return  # gone meanwhile
        if head.startswith(AGE_HEADER):
            self.encrypted.add(path)
        elif kind := plaintext_kind(head):
            self.plaintext[path] = kind


@pytest.fixture
def encrypted(backup_env: Path, tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """Age recipients set, the identity at hand, and a temporary directory of this test's
    own (where throwaway servers live) to watch with the artifacts; the `postgres` OS user
    a drill's cluster runs as can reach it."""
    recipient, identity = age_identity_file(tmp_path / "identity.txt")
    monkeypatch.setenv("BACKUP_ENCRYPTION_RECIPIENTS", recipient)
    monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(identity))
    scratch = Path(tempfile.mkdtemp(prefix="bp-plaintext-"))
    scratch.chmod(0o755)
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.slow
def test_no_plaintext_rests_on_disk_while_encrypted_snapshots_are_made_and_restored(
    encrypted, backup_env, source_db, broker_definitions, tmp_path, monkeypatch, capsys
):
    consul = ConsulDouble({CONSUL_TOKEN: MANAGEMENT})
    for n in range(50):
        consul.state.put(f"crm/services/svc-{n:02d}", json.dumps({"replicas": n}).encode())
    monkeypatch.setenv("BACKUP_CONSUL_HTTP_ADDR", consul.url)
    monkeypatch.setenv("BACKUP_CONSUL_TOKEN", CONSUL_TOKEN)
    vhost = f"bp-plain-{uuid.uuid4().hex[:8]}"
    admin("PUT", f"vhosts/{vhost}")
    admin("PUT", f"queues/{vhost}/crm.mail", {"durable": True})
    rabbitmq, kv = vhost_state(vhost), kv_of(consul)
    restored, fresh = unique_name("bp_restored"), ConsulDouble({CONSUL_TOKEN: MANAGEMENT})
    try:
        with (
            redis_process(tmp_path / "redis-source", "source-pw") as source_redis,
            redis_process(tmp_path / "redis-target", "target-pw") as target_redis,
            scratch_databases(restored),
            PlaintextWatch(backup_env, encrypted) as watch,
        ):
            fill_crm_data(source_redis)
            monkeypatch.setenv("BACKUP_REDIS_PORT", str(port_of(source_redis)))
            monkeypatch.setenv("BACKUP_REDIS_PASSWORD", "source-pw")
            for kind in ("postgres", "redis", "rabbitmq", "consul"):
                assert run_backup(kind).success, kind
                assert main(["verify", kind, "--deep"]) == 0, kind
            for kind in ("postgres", "redis", "consul"):
                assert main(["drill", kind]) == 0, kind

            postgres = ["--target-dsn", target_dsn(restored), "--database", source_db]
            assert main(["restore", "postgres", *postgres]) == 0
            redis = f"redis://:target-pw@127.0.0.1:{port_of(target_redis)}"
            assert main(["restore", "redis", "--target-url", redis]) == 0
            admin("DELETE", f"vhosts/{vhost}")
            assert (
                main(["restore", "rabbitmq", "--management-url", RABBITMQ, "--vhost", vhost]) == 0
            )
            consul.state.kv.clear()
            assert main(["restore", "consul", "--http-addr", consul.url]) == 0
            snapshot_restore = ["--http-addr", fresh.url, "--snapshot-restore"]
            assert main(["restore", "consul", *snapshot_restore]) == 0

            assert database_state(restored) == database_state(source_db)
            assert_same_data(server_state(target_redis), server_state(source_redis))
        assert vhost_state(vhost) == rabbitmq
        assert kv_of(consul) == kv_of(fresh) == kv
    finally:
        admin("DELETE", f"vhosts/{vhost}")
        consul.close()
        fresh.close()
    assert watch.plaintext == {}
    staged = {Path(path).name.split(".")[0] for path in watch.encrypted}
    assert {source_db, "globals", "dump", "definitions", "consul", "kv"} <= staged, staged
