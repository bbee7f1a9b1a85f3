"""The verification plane: drills leave the backup run, need the age identity only where they
run, and never touch the system that was backed up."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import DagsterInstance

from backup_pipelines.cli import main
from backup_pipelines.sources.postgres.scratch import throwaway_cluster
from backup_pipelines_tests.conftest import (
    SOURCE_DSN,
    age_identity_file,
    checks_of,
    flip_byte,
    run_backup,
    run_verification,
    store_from_env,
    verification_of,
)
from backup_pipelines_tests.postgres_fixtures import appeared_elsewhere, connect


@contextmanager
def databases_seen() -> Iterator[set[str]]:
    """Every database name on the machine's cluster while the block runs, polled."""
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        with connect("postgres") as admin:
            while not done.is_set():
                rows = admin.execute("SELECT datname FROM pg_database").fetchall()
                seen.update(row[0] for row in rows)
                done.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()


def verify_and_read_skips(source: str):
    """The verification run, and the reasons it logged for skipping (as the UI shows them)."""
    instance = DagsterInstance.ephemeral()
    result = run_verification(source, instance)
    logs = instance.all_logs(result.run_id)
    return result, [entry.user_message for entry in logs if "is not verified" in entry.user_message]


def test_an_encrypted_backup_needs_no_identity_and_its_drill_needs_one(
    source_db, monkeypatch, tmp_path, capsys
):
    recipient, identity = age_identity_file(tmp_path / "age-identity.txt")
    monkeypatch.setenv("BACKUP_ENCRYPTION_RECIPIENTS", recipient)
    backup = run_backup("postgres")
    assert backup.success and checks_of(backup)["integrity"].passed

    verification, [skipped] = verify_and_read_skips("postgres")
    assert verification.success and verification_of(verification, "postgres") is None
    assert "set BACKUP_AGE_IDENTITY_FILE" in skipped
    assert main(["drill", "postgres"]) == 2
    assert "set BACKUP_AGE_IDENTITY_FILE" in capsys.readouterr().err

    monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(identity))
    proof = verification_of(run_verification("postgres"), "postgres")
    assert proof["passed"] and proof["databases"][source_db]["differences"] == {}
    assert main(["drill", "postgres"]) == 0


def test_a_corrupted_snapshot_fails_the_drill_and_the_verification(source_db, capsys):
    assert run_backup("postgres").success
    store = store_from_env()
    snapshot = store.find("postgres")
    flip_byte(store, snapshot.snapshot_id, f"{source_db}.dump.zst", offset=2000)

    assert main(["drill", "postgres"]) == 1
    assert f"{source_db}.dump.zst: sha256 does not match the manifest" in capsys.readouterr().err
    verification = run_verification("postgres")
    assert not verification.success
    [failure] = [event for event in verification.all_events if event.is_step_failure]
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith(f"postgres/{snapshot.snapshot_id} does not restore equal")


def test_no_database_appears_on_the_backed_up_cluster_during_a_backup_or_a_drill(source_db):
    with connect("postgres") as admin:
        before = {row[0] for row in admin.execute("SELECT datname FROM pg_database").fetchall()}
    with databases_seen() as seen:
        assert run_backup("postgres").success
        assert run_verification("postgres").success
        assert main(["drill", "postgres"]) == 0
    assert appeared_elsewhere(seen - before), seen - before


def test_a_drill_target_that_is_the_backed_up_cluster_is_refused(source_db, monkeypatch, capsys):
    assert run_backup("postgres").success
    monkeypatch.setenv("BACKUP_POSTGRES_DRILL_DSN", SOURCE_DSN.replace("127.0.0.1", "localhost"))
    assert main(["drill", "postgres"]) == 2
    assert "BACKUP_POSTGRES_DRILL_DSN names the backed-up cluster" in capsys.readouterr().err
    assert not run_verification("postgres").success


def test_a_scratch_server_named_for_drills_is_used_and_left_as_it_was(source_db, monkeypatch):
    assert run_backup("postgres").success
    with throwaway_cluster(None, print) as scratch:  # stands in for an operator's scratch server
        monkeypatch.setenv("BACKUP_POSTGRES_DRILL_DSN", scratch.dsn)
        with scratch.connect() as connection:
            before = connection.execute("SELECT datname FROM pg_database").fetchall()
        proof = verification_of(run_verification("postgres"), "postgres")
        assert proof["passed"] and proof["rows_restored"] > 2800
        with scratch.connect() as connection:
            assert connection.execute("SELECT datname FROM pg_database").fetchall() == before


def test_a_drill_without_any_snapshot_is_a_clear_failure(backup_env, capsys):
    assert main(["drill", "redis"]) == 1
    assert "there is no complete redis snapshot" in capsys.readouterr().err
    verification, [skipped] = verify_and_read_skips("redis")  # nothing to verify yet
    assert verification.success and "there is no complete redis snapshot" in skipped
