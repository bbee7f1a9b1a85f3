"""Pruning real stores: hundreds of snapshots over years, leftovers, dry runs, S3 failing midway."""

import json
import os
import random
from datetime import UTC, datetime, timedelta

import pytest

from backup_pipelines.cli import main
from backup_pipelines.errors import StoreError
from backup_pipelines.retention.policy import RetentionRules
from backup_pipelines.retention.pruning import apply_retention
from backup_pipelines.snapshot.manifest import new_snapshot_id, utc_now
from backup_pipelines.snapshot.reader import verify_snapshot
from backup_pipelines.snapshot.staging import stage
from backup_pipelines.storage.local import LocalBackend
from backup_pipelines_tests.conftest import make_s3_store, run_job, runtime_from_env
from backup_pipelines_tests.tcp_proxy import CuttingProxy

CUSTOM_RULES = {
    "BACKUP_RETENTION_DAILY": "5",
    "BACKUP_RETENTION_WEEKLY": "3",
    "BACKUP_RETENTION_MONTHLY": "6",
    "BACKUP_RETENTION_YEARLY": "2",
}


def add_history(store, staging_dir, source: str, count: int, newest: datetime) -> list[str]:
    """`count` complete snapshots, roughly every 6 days back from `newest`, with real bytes."""
    rng = random.Random(count)
    ids = []
    for n in range(count):
        started = newest - timedelta(days=6 * n, hours=rng.randint(0, 20))
        with stage(staging_dir, source, f"{n:08x}-history") as staged:
            staged.started_at = started
            staged.snapshot_id = new_snapshot_id(f"{n:08x}", started)
            staged.add_stream("dump.bin", [rng.randbytes(200)])
        store.commit(staged)
        staged.discard()
        ids.append(staged.snapshot_id)
    return ids


def add_leftover(store, source: str, snapshot_id: str, age: timedelta) -> None:
    """An interrupted attempt: artifacts without a manifest (S3 cannot backdate an object)."""
    store.backend.put_bytes(f"{source}/{snapshot_id}/dump.bin.zst", b"partial")
    if isinstance(store.backend, LocalBackend):
        directory = store.backend.root / source / snapshot_id
        old = (utc_now() - age).timestamp()
        for path in (directory / "dump.bin.zst", directory):
            os.utime(path, (old, old))


@pytest.fixture
def history(store_env, monkeypatch):
    """300 snapshots of redis over about five years, and the custom rules in the environment."""
    for name, value in CUSTOM_RULES.items():
        monkeypatch.setenv(name, value)
    runtime = runtime_from_env()
    store = runtime.store
    ids = add_history(
        store, runtime.staging.directory, "redis", 300, datetime(2026, 11, 20, tzinfo=UTC)
    )
    return runtime, ids


@pytest.mark.slow
def test_dry_run_deletes_nothing_and_a_real_prune_leaves_exactly_the_kept_set(
    history, store_env, capsys
):
    runtime, ids = history
    store = runtime.store
    young, old = "20261122T010000Z-0000aaaa", "20261101T010000Z-0000bbbb"
    if store_env == "local":
        add_leftover(store, "redis", young, timedelta(hours=2))
        add_leftover(store, "redis", old, timedelta(days=3))
    else:  # S3 cannot backdate an object: one leftover, judged now and a day later
        add_leftover(store, "redis", young, timedelta(0))

    assert main(["prune", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(store.list_snapshots("redis")) == 300
    assert {a.snapshot_id for a in store.survey("redis").attempts} >= {young}
    kept = {name.split("/", 1)[1] for name in plan["keep"]}
    deleted = {name.split("/", 1)[1] for name in plan["delete"]}
    assert ids[0] in kept and young not in kept | deleted
    assert kept | deleted == set(ids) | ({old} if store_env == "local" else set())
    assert 5 < len(kept) < 5 + 3 + 6 + 2 + 1  # the rules' counts, the oldest at most

    assert main(["prune", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == plan
    assert {s.snapshot_id for s in store.list_snapshots("redis")} == kept
    assert [a.snapshot_id for a in store.survey("redis").attempts] == [young]
    for snapshot in store.list_snapshots("redis"):
        assert verify_snapshot(store, snapshot) == []
    if store_env == "s3":
        later = utc_now() + timedelta(hours=25)
        rules = RetentionRules.from_settings(runtime.shared)
        apply_retention(store, runtime.sources, rules, dry_run=False, now=later, log=lambda _: None)
        assert store.survey("redis").attempts == []


def test_s3_failing_midway_leaves_every_listed_snapshot_whole(
    backup_env, s3_endpoint, s3_bucket, monkeypatch
):
    monkeypatch.setenv("BACKUP_RETENTION_DAILY", "1")
    for name in ("WEEKLY", "MONTHLY", "YEARLY"):
        monkeypatch.setenv(f"BACKUP_RETENTION_{name}", "0")
    runtime = runtime_from_env()
    direct = make_s3_store(s3_endpoint, s3_bucket)
    add_history(direct, runtime.staging.directory, "redis", 60, datetime(2026, 11, 20, tzinfo=UTC))
    rules = RetentionRules.from_settings(runtime.shared)
    port = int(s3_endpoint.rsplit(":", 1)[1])
    measuring = CuttingProxy(port, cut_after=1 << 40)  # how many bytes listing alone takes
    measured = make_s3_store(measuring.url, s3_bucket)
    apply_retention(measured, runtime.sources, rules, dry_run=True, now=utc_now())
    proxy = CuttingProxy(port, cut_after=measuring.sent + 20_000)
    through_proxy = make_s3_store(proxy.url, s3_bucket, max_attempts=1)

    with pytest.raises(StoreError):
        apply_retention(
            through_proxy, runtime.sources, rules, dry_run=False, now=utc_now(), log=len
        )
    assert proxy.cut.is_set()
    survivors = direct.list_snapshots("redis")
    assert 1 < len(survivors) < 60  # cut midway: some gone, some not yet
    for snapshot in survivors:
        assert verify_snapshot(direct, snapshot) == []


def test_retention_job_prunes_and_reports(backup_env, monkeypatch):
    monkeypatch.setenv("BACKUP_RETENTION_DAILY", "2")
    for name in ("WEEKLY", "MONTHLY", "YEARLY"):
        monkeypatch.setenv(f"BACKUP_RETENTION_{name}", "0")
    runtime = runtime_from_env()
    store = runtime.store
    add_history(store, runtime.staging.directory, "consul", 10, datetime(2026, 11, 20, tzinfo=UTC))

    result = run_job("retention_job")
    assert result.success
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = {k: v.value for k, v in output.event_specific_data.metadata.items()}
    assert metadata["consul_kept"] == 2 and metadata["consul_deleted"] == 8
    assert metadata["bytes_freed"] > 0
    assert len(store.list_snapshots("consul")) == 2
