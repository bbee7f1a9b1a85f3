"""Tamper-proof storage against moto's S3 server enforcing IAM: a bucket with Object Lock and a
default retention rule, the README's three policies (deploy/s3-policies/) as the only rights of
the backup writer, the pruner and the verifier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from dagster import build_schedule_context

from backup_pipelines.cli import main
from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines.snapshot.reader import verify_snapshot
from backup_pipelines.storage.layout import MANIFEST_NAME
from backup_pipelines_tests.conftest import (
    checks_of,
    commit_snapshot,
    free_port,
    run_backup,
    runtime_from_env,
    wait_for_port,
)
from backup_pipelines_tests.redis_fixtures import redis_process
from backup_pipelines_tests.test_documents import RESTIC_PASSWORD, tree_state
from backup_pipelines_tests.test_redis import port_of
from backup_pipelines_tests.test_retention import add_history

POLICIES = Path(__file__).resolve().parents[1] / "deploy" / "s3-policies"
ROOT_KEYS = ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
LOCK_DAYS = 2


def client(endpoint: str, service: str, keys: tuple[str, str]):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=keys[0],
        aws_secret_access_key=keys[1],
        config=Config(s3={"addressing_style": "path"}),
    )


def make_user(endpoint: str, via: tuple[str, str], name: str, policy: str) -> tuple[str, str]:
    iam = client(endpoint, "iam", via)
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="store", PolicyDocument=policy)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture(scope="module")
def iam_s3():
    """A moto server that checks every request against IAM (its first three requests, which
    make the admin, excepted), and the admin's keys."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    command = [Path(sys.executable).with_name("moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port)  # no request: each unauthenticated one counts against the three
        admin = make_user(endpoint, ROOT_KEYS, "admin", json.dumps(_allow_all()))
        yield endpoint, admin
    finally:
        process.terminate()
        process.wait(timeout=10)


def _allow_all() -> dict:
    statement = {"Effect": "Allow", "Action": "*", "Resource": "*"}
    return {"Version": "2012-10-17", "Statement": [statement]}


@dataclass
class LockedStore:
    endpoint: str
    bucket: str
    admin: object
    writer: tuple[str, str]
    pruner: tuple[str, str]
    verifier: tuple[str, str]

    def objects(self) -> list[dict]:
        """Every version and delete marker in the bucket."""
        found = self.admin.list_object_versions(Bucket=self.bucket)
        return found.get("Versions", []) + found.get("DeleteMarkers", [])

    def expire(self, key: str) -> None:
        """What an administrator with the bypass right may do in GOVERNANCE mode: let the lock
        of every version of `key` end two seconds from now (moto has no clock to advance)."""
        soon = datetime.now(UTC) + timedelta(seconds=2)
        for version in self.admin.list_object_versions(Bucket=self.bucket, Prefix=key)["Versions"]:
            self.admin.put_object_retention(
                Bucket=self.bucket,
                Key=version["Key"],
                VersionId=version["VersionId"],
                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": soon},
                BypassGovernanceRetention=True,
            )


@pytest.fixture
def locked_store(iam_s3, backup_env, monkeypatch) -> LockedStore:
    """A bucket with Object Lock and a default GOVERNANCE retention of one day, three users
    holding only their policy, and the environment of a backup host (writer keys, two days of
    lock on every object)."""
    endpoint, admin_keys = iam_s3
    bucket = f"locked-{uuid.uuid4().hex[:12]}"
    admin = client(endpoint, "s3", admin_keys)
    admin.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    admin.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    users = {}
    for role in ("backup-writer", "pruner", "verifier"):
        policy = json.loads(
            (POLICIES / f"{role}.json").read_text().replace(":::backups", f":::{bucket}")
        )
        # moto checks HeadBucket (restic's first request) as s3:HeadBucket, which is no IAM
        # action; AWS checks s3:ListBucket, which every policy grants.
        policy["Statement"].append(
            {"Effect": "Allow", "Action": "s3:HeadBucket", "Resource": f"arn:aws:s3:::{bucket}"}
        )
        policy = json.dumps(policy)
        users[role] = make_user(endpoint, admin_keys, f"{role}-{bucket}", policy)
    monkeypatch.setenv("BACKUP_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("BACKUP_S3_BUCKET", bucket)
    monkeypatch.setenv("BACKUP_S3_ACCESS_KEY", users["backup-writer"][0])
    monkeypatch.setenv("BACKUP_S3_SECRET_KEY", users["backup-writer"][1])
    monkeypatch.setenv("BACKUP_S3_OBJECT_LOCK_DAYS", str(LOCK_DAYS))
    return LockedStore(
        endpoint, bucket, admin, users["backup-writer"], users["pruner"], users["verifier"]
    )


def as_pruner(store: LockedStore, monkeypatch) -> None:
    """The pruning host: the pruner's keys read, and delete as its prune keys."""
    monkeypatch.setenv("BACKUP_S3_ACCESS_KEY", store.pruner[0])
    monkeypatch.setenv("BACKUP_S3_SECRET_KEY", store.pruner[1])
    monkeypatch.setenv("BACKUP_S3_PRUNE_ACCESS_KEY", store.pruner[0])
    monkeypatch.setenv("BACKUP_S3_PRUNE_SECRET_KEY", store.pruner[1])


@pytest.mark.parametrize("mode", ["GOVERNANCE", "COMPLIANCE"])
def test_backups_into_a_locked_bucket_lock_every_object(
    locked_store, monkeypatch, tmp_path, capsys, mode
):
    monkeypatch.setenv("BACKUP_S3_OBJECT_LOCK_MODE", mode.lower())
    with redis_process(tmp_path / "redis") as server:
        server.set("fsm:user:1", "awaiting_phone")
        monkeypatch.setenv("BACKUP_REDIS_HOST", "127.0.0.1")
        monkeypatch.setenv("BACKUP_REDIS_PORT", str(port_of(server)))
        result = run_backup("redis")  # the writer's keys only: put, list, read back
    assert result.success and checks_of(result)["integrity"].passed
    runtime = runtime_from_env()
    big = os.urandom(20 << 20)  # a multipart upload: 8 MiB parts
    commit_snapshot(runtime.store, runtime.staging.directory, {"crm.dump": big}, source="postgres")

    started = datetime.now(UTC)
    objects = locked_store.objects()
    assert len(objects) >= 4 and all("Size" in o for o in objects)  # no delete marker
    for stored in objects:
        head = locked_store.admin.head_object(
            Bucket=locked_store.bucket, Key=stored["Key"], VersionId=stored["VersionId"]
        )
        assert head["ObjectLockMode"] == mode, stored["Key"]
        until = head["ObjectLockRetainUntilDate"]
        assert abs(until - (started + timedelta(days=LOCK_DAYS))) < timedelta(minutes=2)

    assert main(["snapshots", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {s["source"] for s in listed} == {"redis", "postgres"}
    for snapshot in listed:
        until = datetime.fromisoformat(snapshot["locked_until"])
        assert abs(until - (started + timedelta(days=LOCK_DAYS))) < timedelta(minutes=2)


@pytest.mark.slow
def test_documents_back_up_and_restore_in_a_locked_bucket(
    locked_store, monkeypatch, tmp_path, capsys
):
    """restic writes and removes its lock files: the writer policy allows exactly that."""
    root = tmp_path / "documents"
    for n in range(30):
        (root / f"client-{n % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"client-{n % 3}" / f"contract {n}.pdf").write_bytes(os.urandom(500 + n))
    monkeypatch.setenv("BACKUP_DOCUMENTS_ROOT", str(root))
    monkeypatch.setenv("BACKUP_RESTIC_PASSWORD", RESTIC_PASSWORD)
    assert run_backup("documents").success
    assert main(["restore", "documents", "--target-dir", str(tmp_path / "restored")]) == 0
    assert tree_state(tmp_path / "restored") == tree_state(root)


def test_prune_keeps_locked_snapshots_whole_and_deletes_them_once_the_lock_ends(
    locked_store, monkeypatch, capsys
):
    monkeypatch.setenv("BACKUP_RETENTION_DAILY", "1")
    for rule in ("WEEKLY", "MONTHLY", "YEARLY"):
        monkeypatch.setenv(f"BACKUP_RETENTION_{rule}", "0")
    runtime = runtime_from_env()
    newest = datetime(2026, 11, 20, tzinfo=UTC)
    ids = add_history(runtime.store, runtime.staging.directory, "consul", 6, newest)
    as_pruner(locked_store, monkeypatch)

    assert main(["prune", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["delete"] == []
    assert [entry["snapshot"] for entry in listing["locked"]] == [f"consul/{i}" for i in ids[1:]]
    assert all(entry["retain_until"].endswith("Z") for entry in listing["locked"])
    store = runtime_from_env().store
    survivors = store.list_snapshots("consul")
    assert [s.snapshot_id for s in survivors] == ids
    assert all(verify_snapshot(store, snapshot) == [] for snapshot in survivors)
    assert main(["prune"]) == 0
    assert f"locked consul/{ids[1]} (S3 Object Lock until " in capsys.readouterr().out

    for snapshot_id in ids[1:4]:
        locked_store.expire(f"backups/consul/{snapshot_id}/")
    locked_store.expire(f"backups/consul/{ids[4]}/manifest.json")  # its data stays locked
    time.sleep(3)

    assert main(["prune", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["delete"] == [f"consul/{i}" for i in ids[1:4]]
    assert [entry["snapshot"] for entry in listing["locked"]] == [f"consul/{i}" for i in ids[4:]]
    left = {o["Key"].split("/")[2] for o in locked_store.objects() if "/consul/" in o["Key"]}
    assert left == {ids[0], *ids[4:]}  # no version or delete marker of the deleted ones
    survivors = store.list_snapshots("consul")
    assert [s.snapshot_id for s in survivors] == [ids[0], *ids[4:]]
    assert all(verify_snapshot(store, snapshot) == [] for snapshot in survivors)


def test_deletes_need_the_prune_keys(locked_store, monkeypatch, capsys):
    """The writer's keys cannot delete (its policy lacks it); the prune keys can, once the
    lock ends, and nothing is half-deleted when a delete is refused."""
    monkeypatch.setenv("BACKUP_RETENTION_DAILY", "1")
    for rule in ("WEEKLY", "MONTHLY", "YEARLY"):
        monkeypatch.setenv(f"BACKUP_RETENTION_{rule}", "0")
    runtime = runtime_from_env()
    ids = add_history(runtime.store, runtime.staging.directory, "consul", 2, datetime.now(UTC))
    locked_store.expire(f"backups/consul/{ids[1]}/")
    time.sleep(3)
    assert main(["prune"]) == 1  # the backup host's keys: it sees the lock ended, may not delete
    assert "AccessDenied" in capsys.readouterr().err
    assert [s.snapshot_id for s in runtime_from_env().store.list_snapshots("consul")] == ids

    monkeypatch.setenv("BACKUP_S3_PRUNE_ACCESS_KEY", locked_store.pruner[0])
    monkeypatch.setenv("BACKUP_S3_PRUNE_SECRET_KEY", locked_store.pruner[1])
    assert main(["prune", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["delete"] == [f"consul/{ids[1]}"]
    assert [s.snapshot_id for s in runtime_from_env().store.list_snapshots("consul")] == ids[:1]


def test_object_lock_on_a_bucket_without_it_is_a_clear_configuration_error(
    iam_s3, backup_env, monkeypatch, capsys
):
    endpoint, admin_keys = iam_s3
    bucket = f"plain-{uuid.uuid4().hex[:12]}"
    client(endpoint, "s3", admin_keys).create_bucket(Bucket=bucket)
    for name, value in {
        "BACKUP_S3_ENDPOINT_URL": endpoint,
        "BACKUP_S3_BUCKET": bucket,
        "BACKUP_S3_ACCESS_KEY": admin_keys[0],
        "BACKUP_S3_SECRET_KEY": admin_keys[1],
        "BACKUP_S3_OBJECT_LOCK_DAYS": "7",
    }.items():
        monkeypatch.setenv(name, value)
    runtime = runtime_from_env()
    with pytest.raises(Exception) as failure:
        commit_snapshot(runtime.store, runtime.staging.directory, {"dump.rdb": b"REDIS0011"})
    assert "create the bucket with Object Lock enabled" in str(failure.value)
    assert runtime.store.survey("postgres").attempts == []  # the partial upload is gone


def test_a_backup_host_without_prune_keys_leaves_retention_to_the_pruner(locked_store, monkeypatch):
    def retention_tick():
        defs = build_definitions(runtime_from_env())
        with build_schedule_context() as context:
            return defs.get_schedule_def("retention_schedule").evaluate_tick(context)

    skipped = retention_tick()
    assert not skipped.run_requests
    assert "BACKUP_S3_PRUNE_ACCESS_KEY" in str(skipped.skip_message)
    as_pruner(locked_store, monkeypatch)
    assert len(retention_tick().run_requests) == 1


def as_verifier(store: LockedStore, monkeypatch) -> None:
    monkeypatch.setenv("BACKUP_S3_ACCESS_KEY", store.verifier[0])
    monkeypatch.setenv("BACKUP_S3_SECRET_KEY", store.verifier[1])


def test_a_manifest_an_audit_record_and_a_drill_record_written_over_are_reported(
    locked_store, monkeypatch, capsys, caplog
):
    """Object Lock keeps every version: what was written over is told from what was written
    once, reported, and read as first written."""
    runtime = runtime_from_env()
    snapshot = commit_snapshot(
        runtime.store, runtime.staging.directory, {"dump.rdb": b"REDIS0011"}, source="redis"
    )
    assert main(["verify", "redis"]) == 0
    writer = client(locked_store.endpoint, "s3", locked_store.writer)
    with pytest.raises(ClientError, match="AccessDenied"):  # only the verifier records drills
        writer.put_object(Bucket=locked_store.bucket, Key="backups/.verification/x", Body=b"{}")
    as_verifier(locked_store, monkeypatch)
    runtime = runtime_from_env()
    runtime.verdicts.record("redis", snapshot.snapshot_id, False, datetime.now(UTC))
    capsys.readouterr()

    def forge(prefix: str, body: bytes) -> None:
        found = locked_store.admin.list_objects_v2(Bucket=locked_store.bucket, Prefix=prefix)
        for stored in found["Contents"]:
            locked_store.admin.put_object(Bucket=locked_store.bucket, Key=stored["Key"], Body=body)

    forge(f"backups/redis/{snapshot.snapshot_id}/{MANIFEST_NAME}", b"garbage")
    forge("backups/.audit/", b'{"operation": "forged"}')
    forged_verdict = runtime.verdicts.read("redis").model_copy(update={"passed": True})
    forge("backups/.verification/redis/", forged_verdict.model_dump_json().encode())

    assert main(["snapshots", "redis", "--json"]) == 0
    listed, said = capsys.readouterr()
    assert [s["snapshot_id"] for s in json.loads(listed)] == [snapshot.snapshot_id]
    assert "was written over 1 time(s)" in said and MANIFEST_NAME in said
    assert main(["verify", "redis"]) == 1
    assert "possible tampering" in capsys.readouterr().err
    assert main(["audit", "--json"]) == 0
    records = capsys.readouterr().out
    assert "forged" not in records and ".audit/" in caplog.text and "written over" in caplog.text
    caplog.clear()
    assert runtime_from_env().verdicts.read("redis").passed is False
    assert ".verification/redis/" in caplog.text and "written over" in caplog.text
