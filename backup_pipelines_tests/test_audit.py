"""The audit trail: every operation from the command and from Dagster leaves exactly one
record in the store, with no secret in it; storage usage equals the stored objects."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize
from prometheus_client import generate_latest

from backup_pipelines.cli import main
from backup_pipelines.dagster_defs.audit_trail import audit_trail
from backup_pipelines.metrics import registry_for
from backup_pipelines.storage.layout import AUDIT
from backup_pipelines_tests.conftest import (
    S3_SECRET_KEY,
    checks_of,
    commit_snapshot,
    metadata_of,
    run_backup,
    run_job,
    run_verification,
    runtime_from_env,
    s3_client,
)
from backup_pipelines_tests.redis_fixtures import redis_process
from backup_pipelines_tests.test_redis import port_of
from backup_pipelines_tests.test_retention import add_history

REDIS_PASSWORD = "redis-pw-never-in-the-audit"
TYPED_PASSWORD = "typed-pw-never-in-the-audit"
SECRETS = (REDIS_PASSWORD, TYPED_PASSWORD, S3_SECRET_KEY)


def real_rdb(tmp_path: Path) -> bytes:
    """The RDB of a private server holding one key (what a Redis snapshot holds)."""
    with redis_process(tmp_path / "rdb-source") as server:
        server.set("fsm:user:1", "awaiting_phone")
        path = tmp_path / "dump.rdb"
        subprocess.run(["redis-cli", "-p", str(port_of(server)), "--rdb", str(path)], check=True)
    return path.read_bytes()


def records(**filters) -> list[dict]:
    return [r.model_dump(mode="json") for r in runtime_from_env().audit.records(**filters)]


def raw_records() -> str:
    """Every record's bytes as stored, for secrets to be looked for."""
    log = runtime_from_env().audit
    backend = log.backend
    return "".join(
        backend.get(f"{AUDIT}/{day}/{name}", 1 << 20).data.decode()
        for day in backend.children(f"{AUDIT}/")
        for name in backend.files(f"{AUDIT}/{day}/")
    )


@pytest.mark.slow
def test_each_command_leaves_exactly_one_record(store_env, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("BACKUP_REDIS_PASSWORD", REDIS_PASSWORD)
    runtime = runtime_from_env()
    rdb = real_rdb(tmp_path)
    store, staging = runtime.store, runtime.staging.directory
    older = commit_snapshot(
        store, staging, {"dump.rdb": rdb}, source="redis", run_id="00000001-run"
    )
    newest = commit_snapshot(
        store, staging, {"dump.rdb": rdb}, source="redis", run_id="ffffffff-run"
    )
    done: list[dict] = []

    def one_more(command: list[str], exit_code: int) -> dict:
        assert main(command) == exit_code, capsys.readouterr().err
        capsys.readouterr()
        found = records()
        assert len(found) == len(done) + 1, found
        done.insert(0, found[0])
        assert found[1:] == done[1:]  # nothing else was written or rewritten
        record = found[0]
        assert record["via"] == "command" and record["user"] and record["host"]
        assert record["run_id"] is None and record["at"].endswith("Z")
        return record

    record = one_more(["verify", "redis"], 0)
    assert (record["operation"], record["outcome"]) == ("verify", "succeeded")
    assert record["source"] == "redis"
    assert record["snapshots"] == [f"redis/{newest.snapshot_id}"]

    record = one_more(["restore", "redis", "--output-dir", str(tmp_path / "out")], 0)
    assert (record["operation"], record["outcome"]) == ("restore", "succeeded")
    assert record["target"] == str(tmp_path / "out")
    assert record["snapshots"] == [f"redis/{newest.snapshot_id}"]

    url = f"redis://:{TYPED_PASSWORD}@127.0.0.1:1"
    command = ["restore", "redis", f"--snapshot={older.snapshot_id}", "--target-url", url]
    record = one_more(command, 1)
    assert (record["outcome"], record["target"]) == ("failed", "redis://:***@127.0.0.1:1")
    assert record["error"] and record["snapshots"] == [f"redis/{older.snapshot_id}"]

    flip = runtime.store.backend
    name = newest.manifest.files[0].name
    with runtime.store.open_file("redis", newest.snapshot_id, name) as stored:
        damaged = bytearray(stored.read())
    damaged[-1] ^= 1
    flip.put_bytes(f"redis/{newest.snapshot_id}/{name}", bytes(damaged), replace=True)
    record = one_more(["drill", "redis"], 1)
    assert (record["operation"], record["outcome"]) == ("drill", "failed")
    assert "sha256" in record["error"]

    record = one_more(["prune", "--dry-run"], 0)
    assert (record["operation"], record["detail"], record["source"]) == ("prune", "dry run", None)

    for name in ("WEEKLY", "MONTHLY", "YEARLY"):
        monkeypatch.setenv(f"BACKUP_RETENTION_{name}", "0")
    monkeypatch.setenv("BACKUP_RETENTION_DAILY", "1")
    record = one_more(["prune"], 0)
    assert record["snapshots"] == [f"redis/{older.snapshot_id}"] and record["detail"] is None

    assert main(["audit", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == done
    assert main(["audit", "--source", "consul", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert main(["audit", "--since", later, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["audit"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(done) and " prune " in lines[0] and "via command" in lines[0]
    assert not any(secret in raw_records() for secret in SECRETS)


@pytest.mark.slow
def test_each_dagster_operation_leaves_exactly_one_record(store_env, monkeypatch, tmp_path):
    instance = DagsterInstance.ephemeral()
    with redis_process(tmp_path / "redis", REDIS_PASSWORD) as server:
        monkeypatch.setenv("BACKUP_REDIS_HOST", "127.0.0.1")
        monkeypatch.setenv("BACKUP_REDIS_PORT", str(port_of(server)))
        monkeypatch.setenv("BACKUP_REDIS_PASSWORD", REDIS_PASSWORD)
        server.set("fsm:user:1", "awaiting_phone")
        backed_up = run_backup("redis", instance)
        leftover = "redis/20200101T000000Z-0000dead/dump.rdb.zst"  # a store growing on its own
        runtime_from_env().store.backend.put_bytes(leftover, os.urandom(3 << 20))
        grown = run_backup("redis", instance)
    assert backed_up.success and checks_of(backed_up)["integrity"].passed
    assert "store_growth_warning" not in metadata_of(backed_up, "redis")
    warned = metadata_of(grown, "redis")
    assert (
        warned["store_growth_bytes"] > 3 << 20
        and "faster than its data" in warned["store_growth_warning"]
    )
    metadata = metadata_of(grown, "redis")
    of_run = [r for r in records() if r["run_id"] == grown.run_id]
    assert sorted((r["operation"], r["outcome"]) for r in of_run) == [
        ("backup", "succeeded"),
        ("verify", "succeeded"),
    ]
    assert all(r["snapshots"] == [f"redis/{metadata['snapshot_id']}"] for r in of_run)
    assert metadata["store_bytes"] == runtime_from_env().store.usage("redis")

    monkeypatch.setenv("BACKUP_REDIS_PORT", "1")  # nothing listens: retried, then failed
    failed = run_backup("redis")
    assert not failed.success
    [record] = [r for r in records() if r["run_id"] == failed.run_id]
    assert (record["operation"], record["outcome"]) == ("backup", "failed")
    assert record["via"] == "dagster"
    assert "cannot connect to Redis at 127.0.0.1:1" in record["error"]

    config = {"source": "redis", "output_dir": str(tmp_path / "out")}
    monkeypatch.setenv("BACKUP_RESTORE_ROOTS", str(tmp_path))
    restored = run_job("restore_job", run_config={"ops": {"restore_snapshot": {"config": config}}})
    assert restored.success
    [record] = [r for r in records() if r["run_id"] == restored.run_id]
    assert (record["operation"], record["target"]) == ("restore", str(tmp_path / "out"))

    drilled = run_verification("redis")
    assert drilled.success
    [record] = [r for r in records() if r["run_id"] == drilled.run_id]
    assert (record["operation"], record["outcome"]) == ("drill", "succeeded")

    pruned = run_job("retention_job")
    [record] = [r for r in records() if r["run_id"] == pruned.run_id]
    assert (record["operation"], record["outcome"]) == ("prune", "succeeded")
    assert not any(secret in raw_records() for secret in SECRETS)

    runtime = runtime_from_env()
    shown = materialize(
        [audit_trail], instance=DagsterInstance.ephemeral(), resources={"runtime": runtime}
    )
    [event] = shown.asset_materializations_for_node("audit_trail")
    assert event.metadata["records"].value == len(records())
    assert event.metadata["failed"].value == 1


def test_usage_equals_the_sum_of_the_stored_objects(store_env, tmp_path):
    runtime = runtime_from_env()
    for n in range(3):
        data = {"dump.rdb": os.urandom(5000 * (n + 1))}
        commit_snapshot(
            runtime.store, runtime.staging.directory, data, source="redis", run_id=f"{n:08x}-run"
        )
    runtime.store.backend.put_bytes("redis/20200101T000000Z-0000dead/dump.rdb.zst", b"leftover")
    if store_env == "local":
        root = Path(os.environ["BACKUP_ARTIFACTS_DIR"]) / "redis"
        expected = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    else:
        listing = s3_client(os.environ["BACKUP_S3_ENDPOINT_URL"]).list_objects_v2(
            Bucket=os.environ["BACKUP_S3_BUCKET"], Prefix="backups/redis/"
        )
        expected = sum(item["Size"] for item in listing["Contents"])
    assert runtime.store.usage("redis") == expected
    served = generate_latest(registry_for(runtime)).decode()
    assert f'backup_store_bytes{{source="redis",store="primary"}} {float(expected)}' in served


def test_records_are_kept_as_long_as_the_oldest_snapshot(backup_env, capsys):
    runtime = runtime_from_env()
    store = runtime.store
    newest = datetime(2026, 11, 20, tzinfo=UTC)
    ids = add_history(store, runtime.staging.directory, "redis", 3, newest)
    oldest_day = min(ids)[:8]
    for day in ("20200101", oldest_day, "20261120"):
        store.backend.put_bytes(f"{AUDIT}/{day}/{day}T000000000000Z-0000beef.json", b"{}")
    assert main(["prune"]) == 0  # the defaults keep all three snapshots
    kept = store.backend.children(f"{AUDIT}/")
    assert "20200101" not in kept and {oldest_day, "20261120"} <= set(kept)


def test_a_record_the_store_refuses_never_hides_the_outcome(backup_env, capsys, caplog):
    runtime = runtime_from_env()
    commit_snapshot(
        runtime.store, runtime.staging.directory, {"dump.rdb": b"REDIS0011"}, source="redis"
    )
    (Path(os.environ["BACKUP_ARTIFACTS_DIR"]) / AUDIT).write_text("not a directory")
    assert main(["verify", "redis"]) == 0
    assert "verified" in capsys.readouterr().out
    assert "the audit record of this verify was not written" in caplog.text
