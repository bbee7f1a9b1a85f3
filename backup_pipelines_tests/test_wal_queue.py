"""The bound on WAL waiting for an archive that cannot be reached (BACKUP_WAL_QUEUE_MAX_BYTES):
only the oldest segments are given up, the gap is recorded in the store once it answers again,
announced, counted, and a point-in-time restore refuses to cross it until a new base backup."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from backup_pipelines.cli import main
from backup_pipelines.storage.layout import WAL_ARCHIVE
from backup_pipelines.wal import queue
from backup_pipelines.wal.archive import WalArchive
from backup_pipelines_tests.archiving_cluster import (
    Server,
    remove_restore,
    restore_dir,
    start_restored,
)
from backup_pipelines_tests.conftest import make_s3_store, store_from_env
from backup_pipelines_tests.tcp_proxy import SwitchableProxy
from backup_pipelines_tests.test_events import EventQueue
from backup_pipelines_tests.test_metrics import metrics_file
from backup_pipelines_tests.test_notifications import webhook  # noqa: F401 (a fixture)
from backup_pipelines_tests.test_pitr import base_backup, insert, pitr_cluster, restore, rows
from backup_pipelines_tests.test_wal_ahead import archived, backlog, sha256_of

MIB = 1 << 20
SEGMENT_BYTES = 16 * MIB


def archiver(segments: list[Path], codes: list[int]) -> list[int]:
    """What PostgreSQL's archiver does: each segment in order until one fails, a `.done` for
    each answered 0; the exit codes it saw, after `codes`."""
    for segment in segments:
        status = segment.parent / "archive_status" / f"{segment.name}.ready"
        if not status.exists():
            continue
        code = main(["wal-push", str(segment)])
        codes.append(code)
        if code != 0:
            break
        status.rename(status.with_suffix(".done"))
    return codes


@pytest.fixture
def store_behind_proxy(s3_env, s3_endpoint, s3_bucket, monkeypatch):
    proxy = SwitchableProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("BACKUP_S3_ENDPOINT_URL", proxy.url)
    yield proxy, WalArchive(make_s3_store(s3_endpoint, s3_bucket).backend, WAL_ARCHIVE)
    proxy.down()


def test_only_the_oldest_segments_are_given_up_and_the_gap_is_recorded_once_the_store_answers(
    store_behind_proxy,
    tmp_path,
    monkeypatch,
    broker_url,
    capsys,
    webhook,  # noqa: F811
):
    proxy, archive = store_behind_proxy
    events = EventQueue(broker_url)
    monkeypatch.setenv(queue.QUEUE_MAX_VARIABLE, str(3 * MIB + MIB // 2))
    monkeypatch.setenv("BACKUP_NOTIFY_URLS", webhook.url)
    segments = backlog(tmp_path, 6, 1)
    proxy.down()

    codes = archiver(segments, [])
    assert codes == [0, 0, 0, 1]  # 6, 5 and 4 MiB waited: over 3.5; then 3 MiB did not
    said = capsys.readouterr().err
    assert all(f"{segment.name} is given up" in said for segment in segments[:3])
    assert f"{segments[3].name} is given up" not in said
    assert not archived(archive)
    [(key, _, event)] = events.for_run("", 1)
    assert key == "backup.failed" and event["source"] == WAL_ARCHIVE
    assert segments[0].name in event["error"] and "BACKUP_WAL_QUEUE_MAX_BYTES" in event["error"]
    [told] = webhook.received  # a person is told once, while the store is still unreachable
    assert told["title"] == f"backup_pipelines: {WAL_ARCHIVE} backup failed"

    proxy.up()
    assert archiver(segments, []) == [0, 0, 0]
    assert archived(archive) == {segment.name: sha256_of(segment) for segment in segments[3:]}
    [gap] = archive.gaps()
    assert (gap.first, gap.last, gap.segments, gap.bytes) == (
        segments[0].name,
        segments[2].name,
        3,
        3 * MIB,
    )
    assert events.drain_for("") == []  # announced once, at the gap's first segment
    events.connection.close()


def test_without_the_bound_nothing_is_ever_given_up(store_behind_proxy, tmp_path):
    proxy, archive = store_behind_proxy
    segments = backlog(tmp_path, 3, 1)
    proxy.down()
    assert archiver(segments, []) == [1]
    assert archiver(segments, []) == [1]
    proxy.up()
    assert archiver(segments, []) == [0, 0, 0] and archive.gaps() == []


def test_a_bound_that_is_not_a_number_stops_the_push_naming_it(
    backup_env, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv(queue.QUEUE_MAX_VARIABLE, "lots")
    [segment] = backlog(tmp_path, 1, 1)
    assert main(["wal-push", str(segment)]) == 2
    assert "BACKUP_WAL_QUEUE_MAX_BYTES" in capsys.readouterr().err


def ready_segments(server: Server) -> list[str]:
    status = server.data / "pg_wal" / "archive_status"
    return sorted(name.removesuffix(".ready") for name in os.listdir(status) if ".ready" in name)


def wait_for_archiver(server: Server, start: int, given_up: int, timeout_s: float = 120) -> None:
    """Until PostgreSQL counts `given_up` more segments archived than `start` (a segment given
    up counts as archived)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        [(count,)] = server.query("SELECT archived_count FROM pg_stat_archiver")
        if count >= start + given_up:
            return
    raise AssertionError(f"the archiver did not give up {given_up} segments: {server.tail()}")


@pytest.mark.slow
def test_a_restore_refuses_a_moment_inside_the_gap_and_a_new_base_backup_recovers_past_it(
    s3_env, s3_endpoint, monkeypatch, capsys, tmp_path
):
    proxy = SwitchableProxy(int(s3_endpoint.rsplit(":", 1)[1]))

    def through_proxy(home: Path) -> None:
        monkeypatch.setenv("BACKUP_S3_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv(queue.QUEUE_MAX_VARIABLE, str(3 * SEGMENT_BYTES))

    try:
        with pitr_cluster(monkeypatch, through_proxy) as server:
            server.query("CREATE TABLE orders (id int PRIMARY KEY, note text)")
            insert(server, 1, 100, "before the base backup ")
            base_backup()
            insert(server, 101, 150, "before the outage ")
            [(before_outage,)] = server.query("SELECT clock_timestamp()")
            last_stored = server.switch_wal()

            proxy.down()
            [(already,)] = server.query("SELECT archived_count FROM pg_stat_archiver")
            for n in range(6):
                insert(server, 200 + 10 * n, 209 + 10 * n, "during the outage ")
                if n == 1:
                    [(inside,)] = server.query("SELECT clock_timestamp()")
                server.query("SELECT pg_switch_wal()")
            wait_for_archiver(server, already, given_up=3)
            time.sleep(3)  # the archiver tries the rest, and fails
            waiting = ready_segments(server)
            assert len(waiting) == 3  # the newest three: 48 MiB, the bound, still wait

            proxy.up()
            server.switch_wal()
            archive = WalArchive(store_from_env().backend, WAL_ARCHIVE)
            [gap] = archive.gaps()
            assert gap.first > last_stored and gap.segments == 3 and gap.last < waiting[0]
            assert set(waiting) <= set(archived(archive))
            assert metrics_file(tmp_path)["backup_wal_dropped_bytes_total"] == {
                "postgres_base": 3 * SEGMENT_BYTES
            }

            capsys.readouterr()
            for moment in (inside, None):
                refused = restore_dir()
                chosen = ["--target-time", moment.isoformat()] if moment else []
                argv = ["restore", "postgres_base", "--target-dir", str(refused), *chosen]
                assert main(argv) == 2
                said = capsys.readouterr().err
                assert f"{gap.first} to {gap.last}" in said and "--target-time at or before" in said
                assert not refused.exists()
                remove_restore(refused)

            base_backup()
            insert(server, 1001, 1010, "after the new base backup ")
            [(after,)] = server.query("SELECT clock_timestamp()")
            insert(server, 2001, 2005, "after the moment ")
            server.switch_wal()
        target = restore("--target-time", after.isoformat())
        restored = start_restored(target)
        assert rows(restored) == [(1, 1010, 150 + 60 + 10)]
        restored.stop()
        remove_restore(target)
        assert before_outage < inside < after
    finally:
        proxy.down()
