"""PostgreSQL against the machine's real server: back up, restore into a fresh database, compare."""

import itertools
import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, Backoff, DagsterInstance
from psycopg import sql
from pyrage import x25519

from backup_pipelines.cli import main
from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines.processes import ToolFailed
from backup_pipelines.snapshot.staging import stage
from backup_pipelines.sources.postgres.cluster import Cluster, PostgresUnavailable
from backup_pipelines.sources.postgres.dump import dump_cluster
from backup_pipelines_tests.conftest import (
    PASSWORD,
    RUN_ID,
    SOURCE_DSN,
    age_identity_file,
    checks_of,
    commit_snapshot,
    failed_at_once,
    flip_byte,
    metadata_of,
    run_backup,
    run_job,
    run_verification,
    runtime_from_env,
    store_from_env,
    verification_of,
)
from backup_pipelines_tests.postgres_fixtures import (
    connect,
    create_rich_database,
    database_state,
    scratch_databases,
    unique_name,
)
from backup_pipelines_tests.tcp_proxy import SwitchableProxy


def target_dsn(database: str) -> str:
    return f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/{database}"


@pytest.fixture(params=["local", "s3-encrypted"])
def backup_store(request, backup_env, monkeypatch, tmp_path) -> str:
    """The local store in the clear, then S3 with every artifact encrypted to an age key."""
    if request.param == "s3-encrypted":
        request.getfixturevalue("s3_env")
        recipient, identity_file = age_identity_file(tmp_path / "age-identity.txt")
        monkeypatch.setenv("BACKUP_ENCRYPTION_RECIPIENTS", recipient)
        monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(identity_file))
    return request.param


@pytest.mark.slow
def test_backup_restores_every_object_and_row(backup_store, source_db, capsys):
    result = run_backup("postgres")
    assert result.success

    metadata = metadata_of(result, "postgres")
    figures = metadata["databases"][source_db]
    assert figures["tables"] == 6 and figures["size_bytes"] > 0
    assert figures["dumped_bytes"] > figures["stored_bytes"] > 0
    assert figures["row_counts"]["crm.contacts"] == 501
    assert figures["row_counts"]["pg_largeobject"] == 2
    assert metadata[f"{source_db}: rows"] == sum(figures["row_counts"].values()) - 2  # plotted
    assert metadata["size"].endswith(("KiB", "MiB")) and metadata["sha256_of"].startswith("manif")
    assert metadata["restore"] == (
        f"backup-pipelines restore postgres --snapshot {metadata['snapshot_id']} --target-dsn DSN"
        " [--database NAME] [--globals] [--force]"
    )
    assert PASSWORD not in json.dumps(metadata, default=str)
    checks = {name: check.passed for name, check in checks_of(result).items()}
    assert checks["integrity"] and set(checks) <= {"integrity", "last_backup"}
    verification = verification_of(run_verification("postgres"), "postgres")
    drilled = verification["databases"][source_db]
    assert drilled["differences"] == {} and drilled["rows"] > 2800
    assert drilled["row_counts"]["crm.contacts"] == 501
    assert main(["drill", "postgres"]) == 0
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
    store = store_from_env()
    return [entry.name for entry in store.find("postgres").manifest.files]


def test_restore_refuses_an_occupied_target_and_force_makes_it_equal(source_db, capsys):
    assert run_backup("postgres").success
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
        assert run_backup("postgres").success
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
    assert run_backup("postgres").success
    restored = unique_name("bp_from_dagster")
    with scratch_databases(restored):
        result = run_job(
            "restore_job",
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
    message = failed_at_once(run_backup("postgres"), PASSWORD)
    assert "'no_such_database', which does not exist on 127.0.0.1:5432" in message
    assert store_from_env().list_snapshots("postgres") == []


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
    runtime = runtime_from_env()
    staging_dir = runtime.staging.directory

    with pytest.raises(ToolFailed) as failure:
        with stage(staging_dir, "postgres", RUN_ID) as staged:
            dump_cluster(staged, Cluster(SOURCE_DSN), [source_db])
    assert str(failure.value).startswith(
        f"pg_dump of database '{source_db}' on 127.0.0.1:5432 failed (killed by signal 9)"
    )
    assert PASSWORD not in str(failure.value)
    assert runtime.store.list_snapshots("postgres") == []
    assert list((staging_dir / "postgres").iterdir()) == []


def test_drill_reports_rows_that_differ_from_backup_time(source_db):
    assert run_backup("postgres").success
    runtime = runtime_from_env()
    snapshot = runtime.store.find("postgres")
    stats = snapshot.manifest.stats
    stats["databases"][source_db]["row_counts"]["crm.contacts"] += 1  # as if a row went missing
    result = runtime.sources["postgres"].drill(runtime.reader(snapshot, "drill"), print)
    assert result.problems == [
        f"{source_db}: the restored rows differ from those counted at backup"
    ]
    differences = result.figures["databases"][source_db]["differences"]
    assert differences == {"crm.contacts": {"expected": 502, "restored": 501}}


def test_deep_verify_finds_a_dump_pg_restore_cannot_read(backup_env, capsys):
    runtime = runtime_from_env()
    commit_snapshot(
        runtime.store,
        runtime.staging.directory,
        {
            "globals.sql": b"--\n-- PostgreSQL database cluster dump\n--\n",
            "crm.dump": b"PGDMP" + os.urandom(5000),
        },
    )
    assert main(["verify", "postgres"]) == 0
    assert main(["verify", "postgres", "--deep"]) == 1
    assert "pg_restore of crm.dump failed" in capsys.readouterr().err


def test_snapshot_files_are_plain_tools_formats(source_db, tmp_path):
    """Without this tool, zstd -d and pg_restore read a snapshot (the runbook's last resort)."""
    assert run_backup("postgres").success
    snapshot = store_from_env().find("postgres")
    dump = Path(snapshot.location) / f"{source_db}.dump.zst"
    plain = tmp_path / "plain.dump"
    subprocess.run(["zstd", "-q", "-d", str(dump), "-o", str(plain)], check=True)
    listing = subprocess.run(["pg_restore", "--list", str(plain)], check=True, capture_output=True)
    assert b"TABLE DATA crm contacts" in listing.stdout


def test_backups_of_the_cluster_never_overlap_and_transient_errors_retry(backup_env):
    defs = build_definitions(runtime_from_env())
    postgres_backup = defs.resolve_assets_def(AssetKey("postgres_backup"))
    assert postgres_backup.op.pool == "postgres"
    policy = postgres_backup.op.retry_policy
    assert policy.max_retries >= 3 and policy.backoff == Backoff.EXPONENTIAL
    instance_config = yaml.safe_load((Path(__file__).parents[1] / "dagster.yaml").read_text())
    assert instance_config["concurrency"]["pools"]["default_limit"] == 1


def our_databases() -> set[str]:
    """Databases a restore creates for itself (bp_restore_*, bp_replaced_*)."""
    with connect("postgres") as admin:
        rows = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bp\\_re%'")
        return {row[0] for row in rows.fetchall() if row[0].startswith(("bp_restore_", "bp_repl"))}


def assert_none_left_behind(before: set[str], timeout_s: float = 60) -> None:
    """No database a restore made for itself since `before` stays. A restore of another
    worker may hold one right now, and drops it when it ends: only one that stays is left
    behind."""
    deadline = time.monotonic() + timeout_s
    while (left := our_databases() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == set()


def test_a_damaged_snapshot_or_a_wrong_key_never_touches_the_target(
    source_db, monkeypatch, tmp_path, capsys
):
    recipient, identity_file = age_identity_file(tmp_path / "age-identity.txt")
    the_key = identity_file.read_text()
    monkeypatch.setenv("BACKUP_ENCRYPTION_RECIPIENTS", recipient)
    monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(identity_file))
    assert run_backup("postgres").success
    occupied, missing = unique_name("bp_occupied"), unique_name("bp_missing")
    before_restores = our_databases()
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

        identity_file.write_text(the_key)
        store = store_from_env()
        snapshot = store.find("postgres")
        flip_byte(store, snapshot.snapshot_id, f"{source_db}.dump.zst.age", offset=5000)
        for target in (occupied, missing):
            assert restore(target) == 1
            assert "stored bytes do not match the manifest" in capsys.readouterr().err
        assert database_state(occupied) == before
        with connect("postgres") as admin:
            exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [missing])
            assert exists.fetchone() is None  # no empty database left behind either
        assert_none_left_behind(before_restores)


def test_force_replaces_a_database_in_use_only_once_the_restore_succeeded(source_db):
    assert run_backup("postgres").success
    occupied = unique_name("bp_in_use")
    before_restores = our_databases()
    with scratch_databases(occupied):
        create_rich_database(occupied)
        with connect(occupied) as connection:
            connection.execute("CREATE TABLE only_here (note text)")
            command = ["restore", "postgres", "--target-dsn", target_dsn(occupied)]
            assert main([*command, "--database", source_db, "--force"]) == 0
        assert database_state(occupied) == database_state(source_db)
        assert_none_left_behind(before_restores)


PROGRESS_LINE = re.compile(
    r"pg_dump of database '[^']+' on [^:]+:\d+: [\d.]+ (?:B|KiB|MiB) of [\d.]+ MiB "
    r"\(\d+%\) read, [\d.]+ (?:B|KiB|MiB)/s$"
)


@pytest.mark.slow
def test_a_long_dump_says_how_far_it_has_come_every_ten_seconds(backup_env, monkeypatch):
    """Over a thin link (200 kB/s) a dump of 3 MB takes more than 10 s: the Dagster log says
    how much was read, of the database's size, at which rate, no more often than every 10 s."""
    name = unique_name("bp_slow")
    proxy = SwitchableProxy(5432, downstream_rate=200_000)
    monkeypatch.setenv(
        "BACKUP_POSTGRES_BACKUP_DSN", f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
    )
    monkeypatch.setenv("BACKUP_POSTGRES_DATABASES", name)
    try:
        with scratch_databases(name):
            with connect("postgres") as admin:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            with connect(name) as connection:
                connection.execute(
                    "CREATE TABLE notes AS SELECT n, md5(random()::text) || md5(random()::text)"
                    " AS body FROM generate_series(1, 40000) n"
                )
            instance = DagsterInstance.ephemeral()
            result = run_backup("postgres", instance)
            assert result.success
            assert metadata_of(result, "postgres")["duration_s"] > 10
            said = [(e.timestamp, e.user_message) for e in instance.all_logs(result.run_id)]
    finally:
        proxy.down()
    progress = [
        (at, line)
        for at, line in said
        if line.startswith(f"pg_dump of database '{name}'") and " read, " in line
    ]
    assert progress, [line for _, line in said]
    assert all(PROGRESS_LINE.search(line) for _, line in progress), progress
    times = [at for at, _ in progress]
    assert all(later - earlier >= 9.5 for earlier, later in itertools.pairwise(times))


def test_a_restore_drops_what_one_cut_short_left_behind_a_day_ago(source_db):
    """A restore killed midway leaves its database of its own; the next restore on that server
    drops it once it is a day old and no session uses it (a young or busy one may be a
    restore running now)."""
    assert run_backup("postgres").success
    day_ago = int(time.time()) - 2 * 86400
    left = {
        "old": f"bp_restore_{day_ago}_{os.urandom(4).hex()}",
        "young": f"bp_restore_{int(time.time())}_{os.urandom(4).hex()}",
        "busy": f"bp_replaced_{day_ago}_{os.urandom(4).hex()}",
    }
    restored = unique_name("bp_swept")
    with scratch_databases(*left.values(), restored):
        with connect("postgres") as admin:
            for name in left.values():
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        busy = connect(left["busy"])
        command = ["restore", "postgres", "--target-dsn", target_dsn(restored)]
        assert main([*command, "--database", source_db]) == 0
        assert our_databases() & set(left.values()) == {left["young"], left["busy"]}
        busy.close()


def test_a_cluster_without_a_table_backs_up_with_a_warning(backup_env, monkeypatch):
    empty = unique_name("bp_empty")
    monkeypatch.setenv("BACKUP_POSTGRES_DATABASES", empty)
    with scratch_databases(empty):
        with connect("postgres") as admin:
            admin.execute(f'CREATE DATABASE "{empty}"')
        result = run_backup("postgres")
    assert result.success
    assert "holds a table: if one should" in metadata_of(result, "postgres")["warning"]
