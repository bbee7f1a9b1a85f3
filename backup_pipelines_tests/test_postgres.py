"""PostgreSQL against the machine's real server: back up, restore into a fresh database, compare."""

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from dagster import Backoff, DagsterInstance
from psycopg import sql
from pyrage import x25519

from backup_pipelines.assets import postgres_backup
from backup_pipelines.cli import main
from backup_pipelines.definitions import build_definitions
from backup_pipelines.errors import ProducerFailed
from backup_pipelines.settings import load_settings
from backup_pipelines.snapshot import store_from_settings
from backup_pipelines.snapshot.staging import stage
from backup_pipelines.sources.postgres.cluster import Cluster, PostgresUnavailable
from backup_pipelines.sources.postgres.dump import dump_cluster
from backup_pipelines.sources.postgres.restore import restore_drill
from backup_pipelines_tests.conftest import RUN_ID, commit_snapshot, flip_byte
from backup_pipelines_tests.postgres_fixtures import (
    connect,
    create_rich_database,
    database_state,
    scratch_databases,
    unique_name,
)

PASSWORD = "pw-never-shown"
SOURCE_DSN = f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/postgres"


def target_dsn(database: str) -> str:
    return f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/{database}"


@pytest.fixture
def source_db(backup_env, monkeypatch) -> str:
    """A rich database, and the environment set to back up only it (with a password in the DSN)."""
    name = unique_name("bp_source")
    monkeypatch.setenv("BACKUP_POSTGRES_BACKUP_DSN", SOURCE_DSN)
    monkeypatch.setenv("BACKUP_POSTGRES_DATABASES", name)
    with scratch_databases(name):
        create_rich_database(name)
        yield name


def run_backup_job():
    """The real definitions, built from this test's environment, run like a schedule would."""
    defs = build_definitions(load_settings())
    return defs.resolve_job_def("postgres_backup_job").execute_in_process(
        instance=DagsterInstance.ephemeral(), raise_on_error=False
    )


@pytest.fixture(params=["local", "s3-encrypted"])
def backup_store(request, backup_env, monkeypatch, tmp_path) -> str:
    """The local store in the clear, then S3 with every artifact encrypted to an age key."""
    if request.param == "s3-encrypted":
        request.getfixturevalue("s3_env")
        identity = x25519.Identity.generate()
        identity_file = tmp_path / "age-identity.txt"
        identity_file.write_text(f"# test key\n{identity}\n")
        monkeypatch.setenv("BACKUP_ENCRYPTION_RECIPIENTS", str(identity.to_public()))
        monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(identity_file))
    return request.param


def test_backup_restores_every_object_and_row(backup_store, source_db, capsys):
    result = run_backup_job()
    assert result.success

    [materialization] = result.asset_materializations_for_node("postgres_backup")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    figures = metadata["databases"][source_db]
    assert figures["tables"] == 6 and figures["size_bytes"] > 0
    assert figures["dumped_bytes"] > figures["stored_bytes"] > 0
    assert figures["row_counts"]["crm.contacts"] == 501
    assert figures["row_counts"]["pg_largeobject"] == 2
    assert PASSWORD not in json.dumps(metadata, default=str)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["integrity"].passed and checks["restore_drill"].passed
    drilled = checks["restore_drill"].metadata["databases"].value[source_db]
    assert drilled["differences"] == {} and drilled["rows"] > 2800
    if backup_store == "s3-encrypted":
        assert str(metadata["location"]).startswith("s3://")
        assert all(f.endswith(".zst.age") for f in _stored_names())

    assert main(["verify", "postgres", "--deep"]) == 0
    restored = unique_name("bp_restored")
    with scratch_databases(restored):
        assert (
            main(
                [
                    "restore",
                    "postgres",
                    "--target-dsn",
                    target_dsn(restored),
                    "--database",
                    source_db,
                ]
            )
            == 0
        )
        assert database_state(restored) == database_state(source_db)
    output = capsys.readouterr()
    assert PASSWORD not in output.out + output.err


def _stored_names() -> list[str]:
    store = store_from_settings(load_settings())
    return [entry.name for entry in store.find("postgres").manifest.files]


def test_restore_refuses_an_occupied_target_and_force_makes_it_equal(source_db, capsys):
    assert run_backup_job().success
    target = unique_name("bp_occupied")
    with scratch_databases(target):
        with connect("postgres") as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
        with connect(target) as connection:
            connection.execute("CREATE TABLE stray (keep_me text)")
        command = [
            "restore",
            "postgres",
            "--target-dsn",
            target_dsn(target),
            "--database",
            source_db,
        ]

        assert main(command) == 1
        assert (
            f"database '{target}' on 127.0.0.1:5432 already has 1 tables" in capsys.readouterr().err
        )
        maintenance = [*command[:3], target_dsn("postgres"), *command[4:]]
        assert main(maintenance) == 1
        assert "names the maintenance database 'postgres'" in capsys.readouterr().err
        with connect(target) as connection:
            assert connection.execute("SELECT to_regclass('stray')").fetchone()[0] == "stray"

        assert main([*command, "--force"]) == 0
        assert database_state(target) == database_state(source_db)


def test_globals_bring_back_roles_with_their_passwords(backup_env, monkeypatch, capsys):
    role, database = unique_name("bp_role"), unique_name("bp_owned")
    with connect("postgres") as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'role-secret'").format(sql.Identifier(role))
        )
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(role)
            )
        )
        password_hash = admin.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role]
        ).fetchone()[0]
    monkeypatch.setenv("BACKUP_POSTGRES_DATABASES", database)
    try:
        with connect(database) as connection:
            connection.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            connection.execute("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('hi')")
        assert run_backup_job().success
        with connect("postgres") as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

        server = "postgresql://postgres@127.0.0.1:5432/postgres"
        assert main(["restore", "postgres", "--target-dsn", server]) == 1
        assert "(restore the roles first with --globals)" in capsys.readouterr().err
        with connect("postgres") as admin:  # the failed restore left no empty database behind
            found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
            assert found.fetchone() is None

        assert main(["restore", "postgres", "--target-dsn", server, "--globals", "--force"]) == 0
        with connect("postgres") as admin:
            assert (
                admin.execute(
                    "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role]
                ).fetchone()[0]
                == password_hash
            )
        with connect(database) as connection:
            assert (
                connection.execute(
                    "SELECT tableowner FROM pg_tables WHERE tablename = 'notes'"
                ).fetchone()[0]
                == role
            )
            assert connection.execute("SELECT body FROM notes").fetchone()[0] == "hi"
        # applying the same roles again is harmless
        assert main(["restore", "postgres", "--target-dsn", server, "--globals", "--force"]) == 0
    finally:
        with connect("postgres") as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_restore_job_restores_from_dagster(source_db):
    assert run_backup_job().success
    restored = unique_name("bp_from_dagster")
    defs = build_definitions(load_settings())
    with scratch_databases(restored):
        result = defs.resolve_job_def("restore_job").execute_in_process(
            run_config={
                "ops": {
                    "restore_snapshot": {
                        "config": {
                            "source": "postgres",
                            "target": f"postgresql://postgres@127.0.0.1:5432/{restored}",
                            "database": source_db,
                        }
                    }
                }
            },
            instance=DagsterInstance.ephemeral(),
        )
        assert result.success
        assert database_state(restored) == database_state(source_db)


def test_unreachable_host_is_a_clear_retryable_error(staging_dir):
    cluster = Cluster(f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/crm")
    with pytest.raises(PostgresUnavailable) as failure:
        with stage(staging_dir, "postgres", RUN_ID) as staged:
            dump_cluster(staged, cluster)
    message = str(failure.value)
    assert message.startswith("cannot connect to PostgreSQL at 127.0.0.1:1, database 'crm': ")
    assert PASSWORD not in message
    assert list((staging_dir / "postgres").iterdir()) == []


def test_wrong_database_fails_the_run_at_once_and_leaves_no_snapshot(backup_env, monkeypatch):
    monkeypatch.setenv("BACKUP_POSTGRES_BACKUP_DSN", SOURCE_DSN)
    monkeypatch.setenv("BACKUP_POSTGRES_DATABASES", "no_such_database")
    result = run_backup_job()
    assert not result.success
    failures = [event for event in result.all_events if event.is_step_failure]
    assert len(failures) == 1 and not any(e.is_step_up_for_retry for e in result.all_events)
    message = str(failures[0].step_failure_data.user_failure_data.description)
    assert "'no_such_database', which does not exist on 127.0.0.1:5432" in message
    assert PASSWORD not in message
    assert store_from_settings(load_settings()).list_snapshots("postgres") == []


def test_pg_dump_killed_halfway_leaves_no_snapshot(source_db, tmp_path, monkeypatch):
    real_pg_dump = subprocess.run(
        ["which", "pg_dump"], capture_output=True, text=True
    ).stdout.strip()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "pg_dump"
    fake.write_text(f'#!/bin/sh\n"{real_pg_dump}" "$@" | head -c 65536\nkill -KILL $$\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    settings = load_settings()

    with pytest.raises(ProducerFailed) as failure:
        with stage(settings.staging_dir, "postgres", RUN_ID) as staged:
            dump_cluster(staged, Cluster(SOURCE_DSN), [source_db])
    assert str(failure.value).startswith(
        f"pg_dump of database '{source_db}' on 127.0.0.1:5432 failed (killed by signal 9)"
    )
    assert PASSWORD not in str(failure.value)
    assert store_from_settings(settings).list_snapshots("postgres") == []
    assert list((settings.staging_dir / "postgres").iterdir()) == []


def test_drill_reports_rows_that_differ_from_backup_time(source_db):
    assert run_backup_job().success
    settings = load_settings()
    store = store_from_settings(settings)
    snapshot = store.find("postgres")
    stats = snapshot.manifest.stats
    stats["databases"][source_db]["row_counts"]["crm.contacts"] += 1  # as if a row went missing
    results = restore_drill(
        store, snapshot, Cluster(SOURCE_DSN), [], settings.staging_dir / "drill", print
    )
    assert results[source_db]["differences"] == {"crm.contacts": {"expected": 502, "restored": 501}}
    with connect("postgres") as admin:
        leftovers = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'drill_%'")
        assert leftovers.fetchall() == []


def test_deep_verify_finds_a_dump_pg_restore_cannot_read(backup_env, capsys):
    settings = load_settings()
    commit_snapshot(
        store_from_settings(settings),
        settings.staging_dir,
        {
            "globals.sql": b"--\n-- PostgreSQL database cluster dump\n--\n",
            "crm.dump": b"PGDMP" + os.urandom(5000),
        },
    )
    assert main(["verify", "postgres"]) == 0
    assert main(["verify", "postgres", "--deep"]) == 1
    assert "pg_restore --list of 'crm' failed" in capsys.readouterr().err


def test_snapshot_files_are_plain_tools_formats(source_db, tmp_path):
    """Without this tool, zstd -d and pg_restore read a snapshot (the runbook's last resort)."""
    assert run_backup_job().success
    snapshot = store_from_settings(load_settings()).find("postgres")
    dump = Path(snapshot.location) / f"{source_db}.dump.zst"
    plain = tmp_path / "plain.dump"
    subprocess.run(["zstd", "-q", "-d", str(dump), "-o", str(plain)], check=True)
    listing = subprocess.run(["pg_restore", "--list", str(plain)], check=True, capture_output=True)
    assert b"TABLE DATA crm contacts" in listing.stdout


def test_backups_of_the_cluster_never_overlap_and_transient_errors_retry():
    assert postgres_backup.op.pool == "postgres"
    policy = postgres_backup.op.retry_policy
    assert policy.max_retries >= 3 and policy.backoff == Backoff.EXPONENTIAL
    instance_config = yaml.safe_load((Path(__file__).parents[1] / "dagster.yaml").read_text())
    assert instance_config["concurrency"]["pools"]["default_limit"] == 1


def our_databases() -> list[str]:
    """Databases a restore creates for itself (bp_restore_*, bp_replaced_*)."""
    with connect("postgres") as admin:
        rows = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bp\\_re%'")
        return [row[0] for row in rows.fetchall() if row[0].startswith(("bp_restore_", "bp_repl"))]


def test_a_damaged_snapshot_or_a_wrong_key_never_touches_the_target(
    source_db, monkeypatch, tmp_path, capsys
):
    identity, identity_file = x25519.Identity.generate(), tmp_path / "age-identity.txt"
    identity_file.write_text(f"{identity}\n")
    monkeypatch.setenv("BACKUP_ENCRYPTION_RECIPIENTS", str(identity.to_public()))
    monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(identity_file))
    assert run_backup_job().success
    occupied, missing = unique_name("bp_occupied"), unique_name("bp_missing")
    with scratch_databases(occupied, missing):
        create_rich_database(occupied)
        with connect(occupied) as connection:
            connection.execute(
                "CREATE TABLE only_here (note text); INSERT INTO only_here VALUES ('x')"
            )
        before = database_state(occupied)

        def restore(database: str) -> int:
            command = ["restore", "postgres", "--target-dsn", target_dsn(database)]
            return main([*command, "--database", source_db, "--force"])

        identity_file.write_text(f"{x25519.Identity.generate()}\n")  # not the snapshot's key
        assert restore(occupied) == 1
        assert "cannot decrypt with the identity" in capsys.readouterr().err
        assert database_state(occupied) == before

        identity_file.write_text(f"{identity}\n")
        store = store_from_settings(load_settings())
        snapshot = store.find("postgres")
        flip_byte(store, snapshot.snapshot_id, f"{source_db}.dump.zst.age", offset=5000)
        for target in (occupied, missing):
            assert restore(target) == 1
            assert "stored bytes do not match the manifest" in capsys.readouterr().err
        assert database_state(occupied) == before
        with connect("postgres") as admin:
            exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [missing])
            assert exists.fetchone() is None  # no empty database left behind either
        assert our_databases() == []


def test_force_replaces_a_database_in_use_only_once_the_restore_succeeded(source_db):
    assert run_backup_job().success
    occupied = unique_name("bp_in_use")
    with scratch_databases(occupied):
        create_rich_database(occupied)
        with connect(occupied) as connection:
            connection.execute("CREATE TABLE only_here (note text)")
            command = ["restore", "postgres", "--target-dsn", target_dsn(occupied)]
            assert main([*command, "--database", source_db, "--force"]) == 0
        assert database_state(occupied) == database_state(source_db)
        assert our_databases() == []
