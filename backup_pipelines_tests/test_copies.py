"""Copy stores (3-2-1) against real stores: the primary on moto's S3, an off-site copy on a
second moto server (reached through a proxy that can take it away), and a local copy on disk.
Copies are compared byte for byte; a store goes down, comes back, is cut midway; the primary
dies and everything is restored from a copy."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, build_sensor_context
from prometheus_client import generate_latest

from backup_pipelines.cli import main
from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines.dagster_defs.definition_names import copy_job_name
from backup_pipelines.metrics import registry_for
from backup_pipelines.retention.policy import Candidate, RetentionRules, decide
from backup_pipelines.snapshot.store import SnapshotStore
from backup_pipelines.storage.local import LocalBackend
from backup_pipelines_tests.archiving_cluster import (
    COMMAND,
    SERVER_USER,
    archiving_cluster,
    owned_directory,
    remove_restore,
    restore_dir,
    start_restored,
)
from backup_pipelines_tests.conftest import (
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    checks_of,
    commit_snapshot,
    make_local_store,
    make_s3_store,
    moto_server,
    run_backup,
    run_job,
    run_verification,
    runtime_from_env,
    s3_client,
)
from backup_pipelines_tests.consul_double import MANAGEMENT, ConsulDouble
from backup_pipelines_tests.postgres_fixtures import database_state, scratch_databases, unique_name
from backup_pipelines_tests.redis_fixtures import (
    assert_same_data,
    fill_crm_data,
    redis_process,
    server_state,
)
from backup_pipelines_tests.tcp_proxy import CuttingProxy, SwitchableProxy
from backup_pipelines_tests.test_consul import kv_of
from backup_pipelines_tests.test_documents import RESTIC_PASSWORD, tree_state
from backup_pipelines_tests.test_postgres import target_dsn
from backup_pipelines_tests.test_rabbitmq import MANAGEMENT as RABBITMQ
from backup_pipelines_tests.test_rabbitmq import admin, vhost_state
from backup_pipelines_tests.test_redis import port_of
from backup_pipelines_tests.test_retention import add_history

OFFSITE_SECRET = "offsite-secret-never-shown"
CONSUL_TOKEN = "consul-token-never-shown"


@pytest.fixture(scope="module")
def offsite_s3() -> Iterator[str]:
    """A second S3 service, the off-site one: its own moto server."""
    with moto_server() as server:
        yield server.endpoint


@dataclass
class CopyStores:
    """The stores file's two copy stores, and how a test reaches them behind the code's back."""

    file: Path
    offsite_endpoint: str
    offsite_bucket: str
    nas_root: Path
    proxy: SwitchableProxy
    """Between the code and the off-site service: `down()` takes the store away."""

    @property
    def offsite(self) -> SnapshotStore:
        return make_s3_store(self.offsite_endpoint, self.offsite_bucket)

    @property
    def nas(self) -> SnapshotStore:
        return make_local_store(self.nas_root)

    def write(self, offsite_url: str | None = None, **extra: dict) -> None:
        """The stores file, the off-site store reached at `offsite_url` (the proxy's)."""
        stores = {
            "offsite": {
                "s3": {
                    "endpoint_url": offsite_url or self.proxy.url,
                    "bucket": self.offsite_bucket,
                    "access_key": "${OFFSITE_ACCESS_KEY}",
                    "secret_key": "${OFFSITE_SECRET_KEY}",
                }
            },
            "nas": {"local": {"root": str(self.nas_root)}},
        }
        for name, changes in extra.items():
            stores[name] = stores.get(name, {}) | changes
        self.file.write_text(yaml.safe_dump(stores, sort_keys=False))  # offsite first


def copy_stores_beside(
    endpoint: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CopyStores]:
    """The two copy stores (the off-site one on `endpoint`, the local one under `home`), in
    the stores file the environment names."""
    bucket = f"offsite-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    proxy = SwitchableProxy(int(endpoint.rsplit(":", 1)[1]))
    stores = CopyStores(home / "stores.yaml", endpoint, bucket, home / "nas", proxy)
    stores.write()
    monkeypatch.setenv("OFFSITE_ACCESS_KEY", S3_ACCESS_KEY)
    monkeypatch.setenv("OFFSITE_SECRET_KEY", OFFSITE_SECRET)
    monkeypatch.setenv("BACKUP_STORES_FILE", str(stores.file))
    try:
        yield stores
    finally:
        proxy.down()


@pytest.fixture
def copies(s3_env, offsite_s3, tmp_path, monkeypatch) -> Iterator[CopyStores]:
    """The primary on this worker's moto, the off-site copy on the second, a local copy."""
    yield from copy_stores_beside(offsite_s3, tmp_path, monkeypatch)


def contents(store: SnapshotStore) -> dict[str, str]:
    """Every object of a store, key → sha256, but the copy's own bookkeeping (`.copies/`)."""
    backend = store.backend
    found = {}
    if isinstance(backend, LocalBackend):
        for path in backend.root.rglob("*"):
            if path.is_file():
                found[str(path.relative_to(backend.root))] = _sha256(path.read_bytes())
    else:
        pages = backend.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=backend.bucket, Prefix=f"{backend.prefix}/"):
            for item in page.get("Contents", []):
                key = item["Key"].removeprefix(f"{backend.prefix}/")
                body = backend.client.get_object(Bucket=backend.bucket, Key=item["Key"])
                found[key] = _sha256(body["Body"].read())
    return {key: digest for key, digest in found.items() if not key.startswith(".copies/")}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_report(capsys) -> tuple[int, dict[str, dict]]:
    capsys.readouterr()
    code = main(["copy", "--json"])
    output = capsys.readouterr()
    assert OFFSITE_SECRET not in output.out + output.err
    return code, {store["store"]: store for store in json.loads(output.out)["stores"]}


def copied(report: dict) -> dict[str, list[str]]:
    return {s["source"]: s["copied"] for s in report["sources"] if s["copied"]}


def small_documents(root: Path, monkeypatch) -> Path:
    for n in range(40):
        folder = root / f"клиенты-{n % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"договор №{n}.txt").write_bytes(os.urandom(2000 + 97 * n))
    monkeypatch.setenv("BACKUP_DOCUMENTS_ROOT", str(root))
    monkeypatch.setenv("BACKUP_RESTIC_PASSWORD", RESTIC_PASSWORD)
    return root


def push_wal(folder: Path, *names: str) -> None:
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(os.urandom(8192) + name.encode())
        assert main(["wal-push", str(folder / name)]) == 0


@pytest.mark.slow
def test_every_object_reaches_every_store_byte_for_byte_once(
    copies, consul_kv, tmp_path, monkeypatch, capsys
):
    small_documents(tmp_path / "documents", monkeypatch)
    for _ in range(2):
        assert run_backup("consul").success
        assert run_backup("documents").success
    assert run_verification("consul").success  # a drill verdict
    push_wal(tmp_path / "pg_wal", "000000010000000000000001", "000000010000000000000002")
    endpoint = os.environ["BACKUP_S3_ENDPOINT_URL"]  # a third store beside the primary's bucket:
    near = f"near-{uuid.uuid4().hex[:12]}"  # copied by the S3 service itself
    s3_client(endpoint).create_bucket(Bucket=near)
    keys = {"access_key": "${OFFSITE_ACCESS_KEY}", "secret_key": "${OFFSITE_SECRET_KEY}"}
    copies.write(near={"s3": {"endpoint_url": endpoint, "bucket": near, **keys}})
    stores = {"offsite": copies.offsite, "nas": copies.nas, "near": make_s3_store(endpoint, near)}

    code, first = copy_report(capsys)
    assert code == 0
    primary = runtime_from_env().store
    expected = {
        source: [s.snapshot_id for s in reversed(primary.list_snapshots(source))]
        for source in ("consul", "documents")
    }
    for store in stores:
        assert first[store]["up_to_date"] and first[store]["error"] is None
        assert copied(first[store]) == expected
        assert first[store]["verdicts"] == 1 and first[store]["audit_records"] >= 6
    code, second = copy_report(capsys)  # sends the records the first copy wrote, nothing else
    assert code == 0 and not any(copied(second[store]) for store in stores)
    assert all(s["files"] == 0 for store in stores for s in second[store]["sources"])

    everything = contents(primary)
    assert any(key.startswith("postgres_wal/") for key in everything)
    assert any(key.startswith("documents/restic/") for key in everything)
    assert any(key.startswith(".audit/") for key in everything)
    assert any(key.startswith(".verification/consul/") for key in everything)
    for store in stores.values():
        assert contents(store) == everything
    _, third = copy_report(capsys)
    assert [third[store]["audit_records"] for store in stores] == [0, 0, 0]

    for store in stores:
        assert main(["verify", "--store", store]) == 0
        capsys.readouterr()
        assert main(["snapshots", "consul", "--json", "--store", store]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [s["snapshot_id"] for s in listed] == expected["consul"][::-1]
    target = tmp_path / "from-nas"
    assert main(["restore", "documents", "--store", "nas", "--target-dir", str(target)]) == 0
    assert tree_state(target) == tree_state(tmp_path / "documents")


@pytest.mark.slow
def test_a_store_down_during_three_backups_catches_up_without_duplicates(
    copies, consul_kv, tmp_path, capsys
):
    copies.proxy.down()
    for _ in range(3):
        assert run_backup("consul").success  # a copy store that is down is no backup's concern
    push_wal(tmp_path / "pg_wal", "000000010000000000000001")  # nor PostgreSQL's archiving
    code, report = copy_report(capsys)
    assert code == 1
    assert (
        "offsite" in report and report["offsite"]["error"] and not report["offsite"]["up_to_date"]
    )
    assert report["nas"]["up_to_date"] and len(copied(report["nas"])["consul"]) == 3
    served = served_metrics()
    assert 'backup_store_reachable{store="offsite"} 0.0' in served
    assert 'backup_store_reachable{store="nas"} 1.0' in served
    assert OFFSITE_SECRET not in served

    copies.proxy.up()
    served = served_metrics()
    assert 'backup_store_missing_snapshots{source="consul",store="offsite"} 3.0' in served
    assert re.search(
        r'backup_store_oldest_missing_timestamp_seconds\{source="consul",store="offsite"\}', served
    )
    code, report = copy_report(capsys)
    assert code == 0 and len(copied(report["offsite"])["consul"]) == 3
    [wal] = [s for s in report["offsite"]["sources"] if s["source"] == "postgres_base"]
    assert wal["files"] == 1
    assert not copied(report["nas"])
    primary = runtime_from_env().store
    assert held(copies.offsite) == held(primary)
    theirs, ours = split_audit(contents(copies.offsite)), split_audit(contents(primary))
    assert theirs[0] == ours[0] and theirs[1].items() <= ours[1].items()
    code, report = copy_report(capsys)
    assert code == 0 and not copied(report["offsite"])
    served = served_metrics()
    assert 'backup_store_missing_snapshots{source="consul",store="offsite"} 0.0' in served
    assert 'backup_store_reachable{store="offsite"} 1.0' in served


def held(store: SnapshotStore) -> list[tuple[str, str]]:
    return [(s.snapshot_id, s.manifest_sha256) for s in store.list_snapshots("consul")]


def served_metrics() -> str:
    return generate_latest(registry_for(runtime_from_env())).decode()


def split_audit(objects: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The objects but the audit trail, and the audit trail (the primary holds one record
    more: of the copy itself, written once it was done)."""
    audit = {key: digest for key, digest in objects.items() if key.startswith(".audit/")}
    return {key: digest for key, digest in objects.items() if key not in audit}, audit


def test_a_copy_cut_midway_never_counts_and_leaves_nothing_visible(copies, monkeypatch, capsys):
    runtime = runtime_from_env()
    snapshot = commit_snapshot(
        runtime.store,
        runtime.staging.directory,
        {"dump.rdb": os.urandom(12 << 20)},
        source="redis",
    )
    cutting = CuttingProxy(int(copies.offsite_endpoint.rsplit(":", 1)[1]), cut_after=3 << 20)
    copies.write(offsite_url=cutting.url)
    code, report = copy_report(capsys)
    assert code == 1 and report["offsite"]["error"] and cutting.cut.is_set()
    assert copies.offsite.list_snapshots("redis") == []
    assert not any(key.endswith("manifest.json") for key in contents(copies.offsite))
    copies.write()  # the link is back
    assert main(["snapshots", "redis", "--store", "offsite"]) == 0
    assert "no complete snapshots" in capsys.readouterr().err

    code, report = copy_report(capsys)
    assert code == 0 and copied(report["offsite"]) == {"redis": [snapshot.snapshot_id]}
    [held] = copies.offsite.list_snapshots("redis")
    assert held.manifest_sha256 == snapshot.manifest_sha256
    assert main(["verify", "redis", "--store", "offsite"]) == 0


def test_each_store_keeps_what_its_own_rules_say_and_gets_nothing_back(copies, capsys):
    """The nas keeps two days, the off-site store a year of dailies (longer than the primary's
    default seven): a prune goes by each store's rules, and what a copy store dropped is not
    sent again."""
    copies.write(
        nas={"retention": {"daily": 2, "weekly": 0, "monthly": 0, "yearly": 0}},
        offsite={"retention": {"daily": 365}},
    )
    runtime = runtime_from_env()
    now = datetime.now(UTC)
    add_history(runtime.store, runtime.staging.directory, "redis", 12, now)
    assert copy_report(capsys)[0] == 0
    candidates = [
        Candidate(snapshot.snapshot_id, snapshot.manifest.started_at)
        for snapshot in runtime.store.list_snapshots("redis")
    ]

    capsys.readouterr()
    assert main(["prune", "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    shared = RetentionRules.from_settings(runtime.shared)
    rules = {
        "primary": shared,
        "nas": RetentionRules(daily=2, weekly=0, monthly=0, yearly=0),
        "offsite": replace(shared, daily=365),
    }
    stores = {"primary": runtime.store, "nas": copies.nas, "offsite": copies.offsite}
    listings = {"primary": pruned, **pruned["stores"]}
    for name, store in stores.items():
        kept = sorted(snapshot.snapshot_id for snapshot in store.list_snapshots("redis"))
        assert kept == sorted(decide(candidates, rules[name]).keep), name
        assert sorted(listings[name]["keep"]) == [f"redis/{i}" for i in kept], name
    assert len(stores["offsite"].list_snapshots("redis")) == 12
    assert len(stores["nas"].list_snapshots("redis")) < len(
        stores["primary"].list_snapshots("redis")
    )

    code, report = copy_report(capsys)
    assert code == 0 and not copied(report["nas"]) and not copied(report["offsite"])
    newest = commit_snapshot(
        runtime.store, runtime.staging.directory, {"dump.rdb": b"new"}, source="redis"
    )
    code, report = copy_report(capsys)
    assert copied(report["nas"]) == {"redis": [newest.snapshot_id]}


def test_an_object_lock_copy_store_keeps_locked_snapshots_whole(copies, capsys):
    client = s3_client(copies.offsite_endpoint)
    locked_bucket = f"locked-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=locked_bucket, ObjectLockEnabledForBucket=True)
    copies.offsite_bucket = locked_bucket
    copies.write(
        offsite={
            "s3": {
                "endpoint_url": copies.proxy.url,
                "bucket": locked_bucket,
                "access_key": "${OFFSITE_ACCESS_KEY}",
                "secret_key": "${OFFSITE_SECRET_KEY}",
                "object_lock_days": 3,
                "object_lock_mode": "GOVERNANCE",
                "prune_access_key": "${OFFSITE_ACCESS_KEY}",
                "prune_secret_key": "${OFFSITE_SECRET_KEY}",
            },
            "retention": {"daily": 1, "weekly": 0, "monthly": 0, "yearly": 0},
        }
    )
    runtime = runtime_from_env()
    add_history(runtime.store, runtime.staging.directory, "redis", 4, datetime.now(UTC))
    assert copy_report(capsys)[0] == 0
    [snapshot, *_] = copies.offsite.list_snapshots("redis")
    head = client.head_object(
        Bucket=locked_bucket, Key=f"backups/redis/{snapshot.snapshot_id}/manifest.json"
    )
    assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"]

    capsys.readouterr()
    assert main(["prune", "--store", "offsite", "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert len(pruned["locked"]) == 3 and pruned["delete"] == []
    assert len(copies.offsite.list_snapshots("redis")) == 4
    assert main(["verify", "redis", "--store", "offsite"]) == 0
    assert len(runtime.store.list_snapshots("redis")) == 4  # the primary was not pruned


def test_a_wrong_stores_file_names_every_problem_at_once(backup_env, tmp_path, monkeypatch):
    file = tmp_path / "stores.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "Off-Site": {"local": {"root": "/tmp/x"}},
                "primary": {"local": {"root": "/tmp/y"}},
                "offsite": {
                    "s3": {
                        "bucket": "b",
                        "access_key": "AKIA-in-the-clear",
                        "secret_key": "${UNSET_SECRET_VARIABLE}",
                        "object_lock_days": 0,
                        "colour": "blue",
                    },
                    "retention": {"daily": -1},
                },
                "both": {"local": {"root": "/tmp/z"}, "s3": {}},
                "twin": {"local": {"root": os.environ["BACKUP_ARTIFACTS_DIR"]}},
            }
        )
    )
    monkeypatch.setenv("BACKUP_STORES_FILE", str(file))
    result = subprocess.run([str(COMMAND), "snapshots"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    said = result.stderr
    assert str(file) in said and "AKIA-in-the-clear" not in said
    for expected in (
        "'Off-Site' is not a store name",
        "primary: is the store BACKUP_S3_* configure",
        "offsite.s3.access_key",
        "UNSET_SECRET_VARIABLE",
        "offsite.s3.object_lock_days",
        "offsite.s3.colour",
        "offsite.s3.bucket",
        "offsite.retention.daily",
        "both: needs one of s3 or local",
        "twin: is the same place as primary",
    ):
        assert expected in said, expected


def test_dagster_copies_each_store_as_an_asset_and_the_sensor_starts_them(copies, capsys):
    runtime = runtime_from_env()
    commit_snapshot(runtime.store, runtime.staging.directory, {"dump.rdb": b"x"}, source="redis")
    defs = build_definitions(runtime)
    sensor = defs.resolve_sensor_def("copy_sensor")
    instance = DagsterInstance.ephemeral()
    with build_sensor_context(instance=instance, resources={"runtime": runtime}) as context:
        requested = sensor(context)
    assert sorted(r.job_name for r in requested) == ["copy_nas_job", "copy_offsite_job"]
    assert all(r.tags["backup/copy"].startswith("redis/") for r in requested)

    result = run_job(copy_job_name("offsite"), instance)
    assert result.success
    [materialization] = result.asset_materializations_for_node("copies__offsite")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["copied"] == 1 and metadata["behind"] == 0 and metadata["reachable"]
    assert checks_of(result)["up_to_date"].passed

    copies.proxy.down()
    result = run_job(copy_job_name("offsite"), instance)
    assert result.success  # the store catches up later; the check says it is behind
    check = checks_of(result)["up_to_date"]
    assert not check.passed and OFFSITE_SECRET not in json.dumps(
        {k: str(v.value) for k, v in check.metadata.items()}
    )
    every_log = " ".join(str(event.message) for event in result.all_events)
    assert OFFSITE_SECRET not in every_log


@pytest.fixture
def dying_primary(backup_env, monkeypatch, offsite_s3) -> Iterator:
    """A primary on its own moto server, which the test may stop, and the two copy stores,
    in directories the PostgreSQL server's OS user may read (its wal-fetch reads them: the
    stores' group is its own, as the README asks)."""
    home = owned_directory("copies-")
    monkeypatch.setenv("BACKUP_STORE_GROUP", SERVER_USER)
    with moto_server() as primary:
        bucket = "primary"
        s3_client(primary.endpoint).create_bucket(Bucket=bucket)
        monkeypatch.setenv("BACKUP_S3_ENDPOINT_URL", primary.endpoint)
        monkeypatch.setenv("BACKUP_S3_BUCKET", bucket)
        monkeypatch.setenv("BACKUP_S3_ACCESS_KEY", S3_ACCESS_KEY)
        monkeypatch.setenv("BACKUP_S3_SECRET_KEY", S3_SECRET_KEY)
        try:
            for stores in copy_stores_beside(offsite_s3, home, monkeypatch):
                shutil.chown(stores.file, SERVER_USER)
                yield primary, stores
        finally:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def consul_kv(backup_env, monkeypatch) -> Iterator[ConsulDouble]:
    double = ConsulDouble({CONSUL_TOKEN: MANAGEMENT})
    for n in range(50):
        double.state.put(f"crm/services/svc-{n:02d}", json.dumps({"replicas": n}).encode())
    monkeypatch.setenv("BACKUP_CONSUL_HTTP_ADDR", double.url)
    monkeypatch.setenv("BACKUP_CONSUL_TOKEN", CONSUL_TOKEN)
    yield double
    double.close()


def restored_from_offsite(capsys, *argv: str) -> None:
    """A restore, with the primary gone: it says so once and names the copy store."""
    capsys.readouterr()
    assert main(["restore", *argv]) == 0
    said = capsys.readouterr().err
    assert said.count("cannot be reached") == 1 and "from the copy store offsite" in said


@pytest.mark.slow
def test_with_the_primary_gone_every_kind_restores_from_a_copy(
    dying_primary, source_db, consul_kv, broker_definitions, tmp_path, monkeypatch, capsys
):
    primary, stores = dying_primary
    documents = small_documents(tmp_path / "documents", monkeypatch)
    vhost = f"bp-copies-{uuid.uuid4().hex[:8]}"
    admin("PUT", f"vhosts/{vhost}")
    admin("PUT", f"exchanges/{vhost}/crm.events", {"type": "topic", "durable": True})
    admin("PUT", f"queues/{vhost}/crm.mail", {"durable": True})
    kv = kv_of(consul_kv)
    with (
        redis_process(tmp_path / "redis-source", "source-pw") as source_redis,
        redis_process(tmp_path / "redis-target", "target-pw") as target_redis,
    ):
        fill_crm_data(source_redis)
        monkeypatch.setenv("BACKUP_REDIS_PORT", str(port_of(source_redis)))
        monkeypatch.setenv("BACKUP_REDIS_PASSWORD", "source-pw")
        rabbitmq = vhost_state(vhost)
        for kind in ("postgres", "redis", "rabbitmq", "consul", "documents"):
            assert run_backup(kind).success, kind
        assert main(["copy"]) == 0
        primary.stop()

        restored = unique_name("bp_restored")
        with scratch_databases(restored):
            target = target_dsn(restored)
            restored_from_offsite(
                capsys, "postgres", "--target-dsn", target, "--database", source_db
            )
            assert database_state(restored) == database_state(source_db)
        target_url = f"redis://:target-pw@127.0.0.1:{port_of(target_redis)}"
        restored_from_offsite(capsys, "redis", "--target-url", target_url)
        assert_same_data(server_state(target_redis), server_state(source_redis))
    admin("DELETE", f"vhosts/{vhost}")
    try:
        restored_from_offsite(capsys, "rabbitmq", "--management-url", RABBITMQ, "--vhost", vhost)
        assert vhost_state(vhost) == rabbitmq
    finally:
        admin("DELETE", f"vhosts/{vhost}")
    consul_kv.state.kv.clear()
    restored_from_offsite(capsys, "consul", "--http-addr", consul_kv.url)
    assert kv_of(consul_kv) == kv
    restored_from_offsite(capsys, "documents", "--target-dir", str(tmp_path / "restored"))
    assert tree_state(tmp_path / "restored") == tree_state(documents)

    stores.proxy.down()  # the off-site store too: the next store in the file answers
    assert main(["restore", "consul", "--http-addr", consul_kv.url, "--force"]) == 0
    assert "from the copy store nas" in capsys.readouterr().err


@pytest.mark.slow
def test_with_the_primary_gone_recovery_reaches_a_moment_from_a_copy(
    dying_primary, monkeypatch, capsys
):
    primary, _ = dying_primary
    with archiving_cluster() as server:
        monkeypatch.setenv("BACKUP_POSTGRES_BACKUP_DSN", server.dsn)
        server.query("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        server.query("INSERT INTO orders SELECT n, 'before' FROM generate_series(1, 100) n")
        assert run_job("postgres_base_backup_job").success
        server.query("INSERT INTO orders SELECT n, 'after' FROM generate_series(101, 150) n")
        [(moment,)] = server.query("SELECT clock_timestamp()")
        server.query("INSERT INTO orders SELECT n, 'later' FROM generate_series(151, 170) n")
        server.switch_wal()
    assert main(["copy"]) == 0
    primary.stop()

    target = restore_dir()
    try:
        argv = ["postgres_base", "--target-dir", str(target), "--target-time", moment.isoformat()]
        restored_from_offsite(capsys, *argv)
        recovered = start_restored(target)  # wal-fetch: the primary refuses, the copy answers
        assert recovered.query("SELECT min(id), max(id), count(*) FROM orders") == [(1, 150, 150)]
        assert "came from the copy store offsite" in recovered.tail()
        recovered.stop()
    finally:
        remove_restore(target)
