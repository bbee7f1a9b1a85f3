"""PostgreSQL point-in-time recovery, end to end: a throwaway cluster archiving through this
project's `wal-push`, base backups through Dagster, and `restore postgres_base` directories
started as an operator starts them, recovering through `wal-fetch`."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, build_sensor_context

from backup_pipelines.cli import main
from backup_pipelines.cli.wal import EXIT_STOP_RECOVERY
from backup_pipelines.dagster_defs.continuous_archive import archive_sensor
from backup_pipelines.errors import BackupError
from backup_pipelines.processes import free_loopback_port
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.sources.postgres.base.untar import untar_artifact
from backup_pipelines.sources.registry import archiving
from backup_pipelines.storage.layout import WAL_ARCHIVE
from backup_pipelines.wal.archive import WalArchive
from backup_pipelines.wal.names import segment_position
from backup_pipelines_tests.archiving_cluster import (
    COMMAND,
    RecoveryFailed,
    Server,
    archiving_cluster,
    owned_directory,
    readable_by_server,
    remove_restore,
    replayed,
    restore_dir,
    server_writable,
    standby_of,
    start_restored,
)
from backup_pipelines_tests.conftest import (
    age_identity_file,
    commit_snapshot,
    failed_at_once,
    metadata_of,
    run_job,
    runtime_from_env,
    store_from_env,
)
from backup_pipelines_tests.test_events import CONTRACT_FIELDS, EventQueue
from backup_pipelines_tests.test_metrics import metrics_file

BASE_JOB = "postgres_base_backup_job"


@contextmanager
def pitr_cluster(monkeypatch, prepare: Callable[[Path], None] = lambda home: None):
    """An archiving cluster, and the BACKUP_* environment it and the test share: a local
    store the server's OS user may write, changed by `prepare` before the server starts."""
    home = owned_directory("pitr-store-")
    monkeypatch.setenv("BACKUP_ARTIFACTS_DIR", str(server_writable(home / "artifacts")))
    prepare(home)
    try:
        with archiving_cluster() as server:
            monkeypatch.setenv("BACKUP_POSTGRES_BACKUP_DSN", server.dsn)
            yield server
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(params=["local", "s3 with age"])
def pitr(request, backup_env, monkeypatch) -> Iterator[Server]:
    """On the local store, and on moto's S3 with age encryption."""

    def s3_with_age(home: Path) -> None:
        request.getfixturevalue("s3_env")
        recipient, identity = age_identity_file(home / "identity.txt")
        monkeypatch.setenv("BACKUP_ENCRYPTION_RECIPIENTS", recipient)
        monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(readable_by_server(identity)))

    with pitr_cluster(
        monkeypatch, s3_with_age if request.param != "local" else lambda _: None
    ) as server:
        yield server


@pytest.fixture
def local_pitr(backup_env, monkeypatch) -> Iterator[Server]:
    with pitr_cluster(monkeypatch) as server:
        yield server


def base_backup() -> dict:
    result = run_job(BASE_JOB)
    assert result.success, failed_at_once(result)
    return metadata_of(result, "postgres_base")


def restore(*args: str) -> Path:
    target = restore_dir()
    assert main(["restore", "postgres_base", "--target-dir", str(target), *args]) == 0
    return target


def rows(server: Server) -> list[tuple]:
    return server.query("SELECT min(id), max(id), count(*) FROM orders")


def insert(server: Server, first: int, last: int, note: str) -> None:
    server.query(
        f"INSERT INTO orders SELECT n, '{note}' || n FROM generate_series({first}, {last}) n"
    )


@pytest.mark.slow
def test_recovery_reaches_exactly_a_moment_the_end_and_a_later_timeline(pitr, capsys):
    pitr.query("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    insert(pitr, 1, 100, "before the base backup ")
    metadata = base_backup()
    stats = store_from_env().find("postgres_base").manifest.stats
    assert stats["timeline"] == 1 and stats["start_lsn"] and stats["stop_lsn"]
    assert stats["start_wal"] <= stats["stop_wal"] and metadata["files"] == 1
    insert(pitr, 101, 150, "after the base backup ")
    [(moment,)] = pitr.query("SELECT clock_timestamp()")
    insert(pitr, 151, 170, "after the recorded moment ")
    pitr.switch_wal()

    to_the_end = restore()
    assert "pg_ctl" in capsys.readouterr().out
    restored = start_restored(to_the_end)
    assert rows(restored) == [(1, 170, 170)]
    restored.stop()
    remove_restore(to_the_end)

    to_the_moment = restore("--target-time", moment.isoformat(), "--keep-archiving")
    primary = start_restored(to_the_moment)  # promoted: timeline 2, archiving into the store
    assert rows(primary) == [(1, 150, 150)]
    insert(primary, 1001, 1005, "on the new timeline ")
    assert primary.switch_wal().startswith("00000002")
    primary.stop()
    archive = WalArchive(store_from_env().backend, WAL_ARCHIVE)
    assert archive.find("00000002.history") is not None

    following = restore()  # the end of the archive now lies on timeline 2
    restored = start_restored(following)
    assert rows(restored) == [(1, 1005, 155)]
    assert restored.query("SELECT count(*) FROM orders WHERE id BETWEEN 151 AND 170") == [(0,)]
    restored.stop()
    for directory in (to_the_moment, following):
        remove_restore(directory)


@pytest.mark.slow
def test_damaged_or_missing_wal_stops_recovery_with_a_clear_message(local_pitr, capsys):
    local_pitr.query("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    base_backup()
    for moment, code, said in (
        ("2099-01-01T00:00:00Z", 2, "is after the end of the WAL archive"),
        ("2001-01-01T00:00:00", 1, "is consistent before 2001-01-01T00:00:00Z"),
    ):
        unreachable = restore_dir()
        argv = ["--target-dir", str(unreachable), "--target-time", moment]
        assert main(["restore", "postgres_base", *argv]) == code
        assert said in capsys.readouterr().err and not unreachable.exists()
        remove_restore(unreachable)
    stats = store_from_env().find("postgres_base").manifest.stats
    insert(local_pitr, 1, 50, "first ")
    damaged = local_pitr.switch_wal()
    insert(local_pitr, 51, 60, "second ")
    local_pitr.switch_wal()
    assert segment_position(damaged) > segment_position(stats["stop_wal"])
    archive = WalArchive(store_from_env().backend, WAL_ARCHIVE)
    held = archive.find(damaged)
    key = f"postgres_wal/{damaged[:16]}/{held.stored_name}"
    path = Path(os.environ["BACKUP_ARTIFACTS_DIR"]) / key
    stored = bytearray(path.read_bytes())
    stored[len(stored) // 2] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(stored))

    target = restore_dir()  # started by the restore itself, which waits for the promotion
    argv = ["--target-dir", str(target), "--port", str(free_loopback_port())]
    assert main(["restore", "postgres_base", *argv]) == 1
    said = capsys.readouterr().err
    assert "stopped before it promoted" in said and f"{damaged}-" in said
    assert "does not match its sha256" in said
    assert f'could not restore file "{damaged}" from archive' in said
    remove_restore(target)

    path.unlink()  # now gone altogether, while later WAL is there
    target = restore()
    with pytest.raises(RecoveryFailed) as stopped:
        start_restored(target)
    assert "recovery stops here rather than skip it" in str(stopped.value)
    remove_restore(target)


def wal_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(COMMAND), *args], capture_output=True, text=True)


@pytest.mark.slow
def test_wal_push_and_fetch_keep_postgresql_s_rules(backup_env, tmp_path):
    files = tmp_path / "pg_wal"
    files.mkdir()
    names = [
        "000000010000000000000001",
        "000000010000000000000003",
        "00000002.history",
        "000000010000000000000004.partial",
        "000000010000000000000001.00000028.backup",
    ]
    for name in names:
        (files / name).write_bytes(os.urandom(4096) + name.encode())
        assert wal_command("wal-push", str(files / name)).returncode == 0
        again = wal_command("wal-push", str(files / name))
        assert again.returncode == 0, again.stderr  # the same content again: done already
        fetched = tmp_path / "RECOVERYXLOG"
        assert wal_command("wal-fetch", name, str(fetched)).returncode == 0
        assert fetched.read_bytes() == (files / name).read_bytes()

    other = files / "000000010000000000000007"  # a target's archive is its own
    other.write_bytes(os.urandom(4096))
    assert wal_command("wal-push", "--target", "crm", str(other)).returncode == 0
    assert wal_command("wal-fetch", other.name, str(tmp_path / "x")).returncode == 1
    fetched = wal_command("wal-fetch", "--target", "crm", other.name, str(tmp_path / "x"))
    assert fetched.returncode == 0 and (tmp_path / "x").read_bytes() == other.read_bytes()
    (tmp_path / "x").unlink()

    (files / names[0]).write_bytes(b"other content")
    different = wal_command("wal-push", str(files / names[0]))
    assert different.returncode == 1 and "already holds a different" in different.stderr
    missing = wal_command("wal-push", str(files / "000000010000000000000009"))
    assert missing.returncode == 2 and "there is no WAL file" in missing.stderr
    not_wal = wal_command("wal-push", str(tmp_path / "passwd"))
    assert not_wal.returncode == 2 and "is not the name of a WAL file" in not_wal.stderr

    end = wal_command("wal-fetch", "000000010000000000000005", str(tmp_path / "x"))
    assert end.returncode == 1 and not (tmp_path / "x").exists()  # the end of the archive
    assert wal_command("wal-fetch", "00000003.history", str(tmp_path / "x")).returncode == 1
    hole = wal_command("wal-fetch", "000000010000000000000002", str(tmp_path / "x"))
    assert hole.returncode == EXIT_STOP_RECOVERY and "rather than skip it" in hole.stderr
    outside = wal_command("wal-fetch", "../../etc/passwd", str(tmp_path / "x"))
    assert outside.returncode == EXIT_STOP_RECOVERY
    misspelled = wal_command("wal-fetch", "000000010000000000000001")  # restore_command without %p
    assert misspelled.returncode == EXIT_STOP_RECOVERY

    audit = subprocess.run([str(COMMAND), "audit", "--json"], capture_output=True, text=True)
    records = json.loads(audit.stdout)
    failed = [(r["operation"], r["outcome"]) for r in records if r["operation"] == "wal-push"]
    assert failed == [("wal-push", "failed")] * 3


@pytest.mark.slow
def test_wal_fetch_without_the_identity_or_the_store_stops_recovery(
    backup_env, tmp_path, monkeypatch
):
    recipient, identity = age_identity_file(tmp_path / "identity.txt")
    monkeypatch.setenv("BACKUP_ENCRYPTION_RECIPIENTS", recipient)
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(os.urandom(8192))
    assert wal_command("wal-push", str(segment)).returncode == 0
    no_identity = wal_command("wal-fetch", segment.name, str(tmp_path / "x"))
    assert no_identity.returncode == EXIT_STOP_RECOVERY
    assert "BACKUP_AGE_IDENTITY_FILE" in no_identity.stderr
    monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(identity))
    assert wal_command("wal-fetch", segment.name, str(tmp_path / "x")).returncode == 0
    assert (tmp_path / "x").read_bytes() == segment.read_bytes()

    monkeypatch.setenv("BACKUP_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("BACKUP_S3_BUCKET", "backups")
    monkeypatch.setenv("BACKUP_S3_ACCESS_KEY", "key")
    monkeypatch.setenv("BACKUP_S3_SECRET_KEY", "secret-never-shown")
    unreachable = wal_command("wal-fetch", segment.name, str(tmp_path / "y"))
    assert unreachable.returncode == EXIT_STOP_RECOVERY, unreachable.stderr
    assert "secret-never-shown" not in unreachable.stderr
    pushed = wal_command("wal-push", str(segment))
    assert pushed.returncode == 1 and "secret-never-shown" not in pushed.stderr


@pytest.mark.slow
def test_retention_prunes_wal_only_before_the_oldest_kept_base_backup(local_pitr, monkeypatch):
    local_pitr.query("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    base_backup()
    insert(local_pitr, 1, 10, "between the base backups ")
    local_pitr.switch_wal()
    base_backup()
    insert(local_pitr, 11, 20, "after both ")
    local_pitr.switch_wal()
    store = store_from_env()
    oldest, newest = reversed(store.list_snapshots("postgres_base"))
    archive = WalArchive(store.backend, WAL_ARCHIVE)

    def archived() -> list[str]:
        return sorted(f.name for folder in archive.folders() for f in archive.files(folder))

    def from_on(segment: str, names: list[str]) -> list[str]:
        return [n for n in names if segment_position(n[:24]) >= segment_position(segment)]

    before = archived()
    assert main(["prune"]) == 0  # both base backups kept: only WAL before the older one goes
    everything = archived()
    assert everything == from_on(oldest.manifest.stats["start_wal"], before) != before

    for rule in ("DAILY", "WEEKLY", "MONTHLY", "YEARLY"):
        monkeypatch.setenv(f"BACKUP_RETENTION_{rule}", "0")
    assert main(["prune", "--dry-run"]) == 0 and archived() == everything
    assert main(["prune"]) == 0
    assert store.list_snapshots("postgres_base") == [newest]
    assert archived() == from_on(newest.manifest.stats["start_wal"], everything) != everything

    target = restore()
    restored = start_restored(target)
    assert rows(restored) == [(1, 20, 20)]
    restored.stop()
    remove_restore(target)


@pytest.mark.slow
def test_the_base_backup_is_verified_drilled_and_its_archive_watched(
    local_pitr, tmp_path, broker_url
):
    local_pitr.query("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    insert(local_pitr, 1, 300, "counted ")
    local_pitr.query("ANALYZE orders")
    scans = (
        "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'orders'"
    )
    before = local_pitr.query(scans)
    base_backup()
    assert local_pitr.query(scans) == before  # the catalog says which tables; none is read
    databases = store_from_env().find("postgres_base").manifest.stats["databases"]
    assert databases["postgres"]["row_estimates"]["public.orders"] == 300
    local_pitr.switch_wal()
    assert main(["verify", "postgres_base", "--deep"]) == 0
    assert main(["drill", "postgres_base"]) == 0
    scraped = metrics_file(tmp_path)
    archived_at = scraped["backup_wal_last_archived_timestamp_seconds"]["postgres_base"]
    assert time.time() - 120 < archived_at <= time.time()
    assert scraped["backup_wal_max_age_seconds"] == {"postgres_base": 900}

    runtime = runtime_from_env()
    instance, events = DagsterInstance.ephemeral(), EventQueue(broker_url)

    def tick(cursor: str | None, clock_offset: float = 0) -> str | None:
        """One evaluation of the sensor, as the daemon runs it, `clock_offset` s from now."""
        sensor = archive_sensor(
            archiving([runtime.sources["postgres_base"]]), clock=lambda: time.time() + clock_offset
        )
        with build_sensor_context(
            instance=instance, cursor=cursor, resources={"runtime": runtime}
        ) as context:
            sensor(context)
            return context.cursor

    cursor = tick(None)
    observed = instance.get_latest_materialization_event(AssetKey("postgres_wal"))
    assert observed is not None
    assert observed.asset_materialization.metadata["segments_behind"].value == 0
    cursor = tick(cursor, clock_offset=3600)  # an hour without WAL, but nothing to archive
    assert events.drain_for("") == []

    local_pitr.query("ALTER SYSTEM SET archive_command = '/bin/false'")
    local_pitr.query("SELECT pg_reload_conf()")
    for _ in range(3):
        local_pitr.query("SELECT pg_switch_wal(), txid_current()")
    cursor = tick(tick(cursor, clock_offset=3600), clock_offset=3600)  # one stall, two ticks
    [(routing_key, _, event)] = events.drain_for("")
    assert routing_key == "backup.failed" and event["source"] == "postgres_base"
    assert set(event) == CONTRACT_FIELDS and "WAL archiving stalled" in event["error"]
    events.connection.close()


@pytest.mark.slow
def test_a_base_backup_and_a_dump_from_a_standby_restore_exactly_what_was_committed(
    local_pitr, monkeypatch
):
    local_pitr.query("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    insert(local_pitr, 1, 100, "before the base backup ")
    with standby_of(local_pitr) as standby:
        replayed(standby, local_pitr)
        monkeypatch.setenv("BACKUP_POSTGRES_STANDBY_DSN", standby.dsn)
        metadata = base_backup()
        stats = store_from_env().find("postgres_base").manifest.stats
        assert stats["server"] == f"127.0.0.1:{standby.port}"
        assert stats["standby_of"] == f"127.0.0.1:{local_pitr.port}" and metadata["files"] == 1
        insert(local_pitr, 101, 150, "after the base backup ")
        [(moment,)] = local_pitr.query("SELECT clock_timestamp()")
        insert(local_pitr, 151, 170, "after the moment ")
        local_pitr.switch_wal()

        replayed(standby, local_pitr)  # the dumps need the standby alone: the primary is gone
        monkeypatch.setenv("BACKUP_POSTGRES_BACKUP_DSN", "postgresql://postgres@127.0.0.1:1/none")
        monkeypatch.setenv("BACKUP_POSTGRES_DATABASES", "postgres")
        result = run_job("postgres_backup_job")
        assert result.success, failed_at_once(result)
        dumped = store_from_env().find("postgres").manifest.stats
        assert dumped["server"] == f"127.0.0.1:{standby.port}"
        assert dumped["databases"]["postgres"]["row_counts"]["public.orders"] == 170

    target = restore("--target-time", moment.isoformat())
    restored = start_restored(target)
    assert rows(restored) == [(1, 150, 150)]
    restored.stop()
    remove_restore(target)


def test_a_target_time_without_any_base_backup_says_so(backup_env, capsys):
    target = restore_dir()
    argv = ["--target-dir", str(target), "--target-time", "2026-01-01T00:00:00Z"]
    assert main(["restore", "postgres_base", *argv]) == 1
    assert "no postgres_base base backup in" in capsys.readouterr().err
    remove_restore(target)


def test_a_cluster_that_does_not_archive_is_refused_naming_what_to_set(backup_env, monkeypatch):
    monkeypatch.setenv(
        "BACKUP_POSTGRES_BACKUP_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    result = run_job(BASE_JOB)
    assert "archive_mode = on" in failed_at_once(result)
    assert store_from_env().list_snapshots("postgres_base") == []
    reason = runtime_from_env().sources["postgres_base"].not_configured()
    assert reason is not None and "does not archive its WAL" in reason


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    """A tar holding `members` (a header, and the data of a file)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o600):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info


def untarred(store, staging_dir: Path, target: Path, tar: bytes) -> None:
    snapshot = commit_snapshot(
        store, staging_dir, {"base.tar": tar}, source="postgres_base", run_id=str(uuid.uuid4())
    )
    untar_artifact(SnapshotReader(store, snapshot, staging_dir / "work"), "base.tar", target)


def test_a_base_backups_tar_unpacks_whole_and_a_hostile_one_stops_before_tar_sees_it(
    store, staging_dir, tmp_path
):
    big = os.urandom(3 << 20)  # a file larger than a chunk: its data crosses writes
    good = tar_of(
        (member("base/1", tarfile.DIRTYPE, mode=0o700), b""),
        (member("base/1/1259"), big),
        (member("PG_VERSION"), b"15\n"),
        (member("base/1/link", tarfile.SYMTYPE, "1259"), b""),
        (member("hard", tarfile.LNKTYPE, "PG_VERSION"), b""),
        (member("postmaster.pid"), b"4242\n"),
    )
    target = tmp_path / "data"
    target.mkdir()
    untarred(store, staging_dir, target, good)
    assert (target / "base/1/1259").read_bytes() == big
    assert (target / "base/1/link").resolve() == (target / "base/1/1259").resolve()
    assert (target / "hard").read_text() == "15\n"
    assert not (target / "postmaster.pid").exists()  # a server's leftovers are never restored

    hostile = {
        "../outside": member("../outside"),
        "/etc/evil": member("/etc/evil"),
        "escape": member("escape", tarfile.SYMTYPE, "../../etc"),
        "device": member("device", tarfile.CHRTYPE),
        "setuid": member("setuid", mode=0o4755),
    }
    for name, info in hostile.items():
        refused = tmp_path / f"refused-{len(name)}-{info.type.hex()}"
        refused.mkdir()
        with pytest.raises(BackupError, match="would land outside"):
            untarred(store, staging_dir, refused, tar_of((member("first"), b"x"), (info, b"")))
        assert {p.name for p in refused.iterdir()} <= {"first"}, name
    assert not (tmp_path.parent / "outside").exists()
