"""A snapshot is untrusted input: whoever can write the store can plant one that becomes
`latest`. Its content must never run as code on the restore or drill host, and its id (a
clock far ahead, or a planted future) must never make it the newest."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from datetime import timedelta

import pytest

from backup_pipelines.cli import main
from backup_pipelines.processes import UNPRIVILEGED_USER
from backup_pipelines.records.audit import Entry
from backup_pipelines.snapshot.manifest import utc_now
from backup_pipelines.sources.postgres.scratch import throwaway_cluster
from backup_pipelines.sources.redis.server import throwaway_server
from backup_pipelines.storage import ObjectExists
from backup_pipelines.storage.layout import AUDIT_PREFIX, MANIFEST_NAME
from backup_pipelines_tests.archiving_cluster import owned_directory
from backup_pipelines_tests.conftest import commit_snapshot, run_backup, runtime_from_env
from backup_pipelines_tests.postgres_fixtures import connect, unique_name
from backup_pipelines_tests.test_metrics import metrics_file

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
PLANTED = {
    "meta-command": "\\! touch {canary}\n",
    "copy to program": "COPY (SELECT 1) TO PROGRAM 'touch {canary}';\n",
    "library at login": "ALTER ROLE {role} SET session_preload_libraries = 'evil';\n",
}


def planted_globals(role: str, line: str) -> bytes:
    """pg_dumpall's real output with a superuser role of ours and `line` before it all (before
    pg_dump's own `\\restrict`, which would stop psql's meta-commands after it)."""
    real = subprocess.run(
        ["pg_dumpall", "--globals-only", "--dbname", SERVER],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    evil = f"CREATE ROLE {role};\nALTER ROLE {role} WITH SUPERUSER LOGIN PASSWORD 'planted';\n"
    return f"{evil}{line}{real}".encode()


@pytest.mark.parametrize("planted", PLANTED, ids=list(PLANTED))
def test_a_planted_globals_sql_runs_nothing_and_creates_no_role(backup_env, capsys, planted):
    canary_dir = owned_directory("planted-")  # writable by root and by the server's user
    canary, role = canary_dir / "canary", unique_name("bp_planted")
    runtime = runtime_from_env()
    line = PLANTED[planted].format(canary=canary, role=role)
    commit_snapshot(
        runtime.store, runtime.staging.directory, {"globals.sql": planted_globals(role, line)}
    )
    try:
        restore = ["restore", "postgres", "--target-dsn", SERVER, "--globals", "--force"]
        assert main(restore) == 1
        assert "nothing of it is applied" in capsys.readouterr().err
        assert main(["verify", "postgres", "--deep"]) == 1
        assert "nothing of it is applied" in capsys.readouterr().err
        assert main(["drill", "postgres"]) == 1
        assert not canary.exists()
        with connect("postgres") as admin:
            found = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
            assert found.fetchone() is None
    finally:
        shutil.rmtree(canary_dir, ignore_errors=True)
        with connect("postgres") as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_a_snapshot_from_a_clock_a_day_ahead_is_never_latest_nor_pruned_in_place_of_the_newest(
    backup_env, monkeypatch, tmp_path, capsys
):
    runtime = runtime_from_env()
    store, staging = runtime.store, runtime.staging.directory
    newest = commit_snapshot(store, staging, {"dump.rdb": b"REDIS0011 real"}, source="redis")
    with monkeypatch.context() as clock_ahead:
        a_day_on = utc_now() + timedelta(days=1)
        clock_ahead.setattr("backup_pipelines.snapshot.staging.utc_now", lambda: a_day_on)
        ahead = commit_snapshot(store, staging, {"dump.rdb": b"REDIS0011 ahead"}, source="redis")
    assert ahead.snapshot_id > newest.snapshot_id  # it sorts first

    assert store.find("redis").snapshot_id == newest.snapshot_id
    assert main(["snapshots", "redis", "--json"]) == 0
    listed = capsys.readouterr()
    assert [s["snapshot_id"] for s in json.loads(listed.out)] == [newest.snapshot_id]
    assert f"{ahead.snapshot_id}" in listed.err and "after this host's clock" in listed.err

    for rule in ("DAILY", "WEEKLY", "MONTHLY", "YEARLY"):
        monkeypatch.setenv(f"BACKUP_RETENTION_{rule}", "0")
    monkeypatch.setenv("BACKUP_RETENTION_LAST", "1")
    assert main(["prune"]) == 0
    assert "outside the rules, never deleted" in capsys.readouterr().err
    assert store.read_manifest("redis", newest.snapshot_id) is not None
    assert store.read_manifest("redis", ahead.snapshot_id) is not None

    scraped = metrics_file(tmp_path)
    finished = scraped["backup_snapshot_last_success_timestamp_seconds"]["redis"]
    assert finished == newest.manifest.finished_at.timestamp()


def test_a_manifest_or_an_audit_record_once_written_is_never_written_over(store_env):
    runtime = runtime_from_env()
    store = runtime.store
    snapshot = commit_snapshot(
        store, runtime.staging.directory, {"dump.rdb": b"REDIS0011"}, source="redis"
    )
    manifest = f"redis/{snapshot.snapshot_id}/{MANIFEST_NAME}"
    with pytest.raises(ObjectExists):
        store.backend.put_bytes(manifest, b"garbage")
    assert store.find("redis") == snapshot  # still the snapshot it was

    entry = Entry(snapshots=[f"redis/{snapshot.snapshot_id}"])
    runtime.audit.append("verify", entry, via="command", source="redis")
    [record] = store.backend.files(AUDIT_PREFIX + utc_now().strftime("%Y%m%d") + "/")
    key = f"{AUDIT_PREFIX}{utc_now():%Y%m%d}/{record}"
    before = store.backend.get(key, 1 << 20).data
    with pytest.raises(ObjectExists):
        store.backend.put_bytes(key, b'{"operation": "forged"}')
    assert store.backend.get(key, 1 << 20).data == before

    verdict = b'{"source": "redis"}'
    store.backend.put_bytes(".verification/redis.json", verdict, replace=True)  # by design
    store.backend.put_bytes(".verification/redis.json", verdict, replace=True)


def snapshot_id_now() -> str:
    return f"{utc_now():%Y%m%dT%H%M%SZ}-0000cafe"


def test_a_prune_on_a_host_whose_clock_runs_two_days_ahead_removes_nothing_running(
    store_env, monkeypatch
):
    """An upload in progress (a location without its manifest yet) and a dump in staging look
    two days old to that clock; the store's clock, and the dump's lock, say otherwise."""
    runtime = runtime_from_env()
    attempt = snapshot_id_now()
    runtime.store.backend.put_bytes(f"redis/{attempt}/dump.rdb.zst", b"part of an upload")
    staging = runtime.staging.directory
    with runtime.staging.one_at_a_time("redis", print):  # a dump of redis is running here
        dumping = staging / "redis" / "20261203T000000Z-0000beef"
        dumping.mkdir(parents=True)
        (dumping / "dump.rdb.zst").write_bytes(b"being written")
        ahead = utc_now() + timedelta(days=2)
        for module in ("backup_pipelines.operations.prune", "backup_pipelines.retention.pruning"):
            monkeypatch.setattr(f"{module}.utc_now", lambda: ahead)
        assert main(["prune"]) == 0
        assert (dumping / "dump.rdb.zst").exists()
    assert [a.snapshot_id for a in runtime.store.survey("redis").attempts] == [attempt]


REACHES_FOR_THE_SHELL = """
CREATE FUNCTION public.planted() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  IF current_database() <> '{source}' THEN
    EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'touch {canary}');
  END IF;
  RETURN 1;
END $$;
CREATE MATERIALIZED VIEW public.planted_view AS SELECT public.planted() AS one;
"""
"""A dump whose restore calls a function (refreshing a materialized view) that runs a shell
command through the server: as a superuser it would, anywhere but in its own database."""


def test_sql_in_a_dump_that_reaches_for_the_shell_runs_nothing_in_a_drill(source_db, capsys):
    canary_dir = owned_directory("planted-")
    canary = canary_dir / "canary"
    try:
        with connect(source_db) as connection:
            connection.execute(REACHES_FOR_THE_SHELL.format(source=source_db, canary=canary))
        assert run_backup("postgres").success
        assert main(["drill", "postgres"]) == 1
        assert "pg_execute_server_program" in capsys.readouterr().err
        assert not canary.exists()
    finally:
        shutil.rmtree(canary_dir, ignore_errors=True)


SUPERUSER_ONLY_OBJECTS = """
CREATE SCHEMA ext;
CREATE EXTENSION pg_stat_statements;
CREATE EXTENSION hstore WITH SCHEMA ext;
CREATE TABLE public.tagged (id int PRIMARY KEY, tags ext.hstore);
INSERT INTO public.tagged SELECT i, ext.hstore('n', i::text) FROM generate_series(1, 50) i;
CREATE FUNCTION public.noted() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE EVENT TRIGGER noted ON ddl_command_end EXECUTE FUNCTION public.noted();
"""


def test_a_drill_restoring_without_privileges_still_proves_extensions_and_event_triggers(
    source_db, capsys
):
    with connect(source_db) as connection:
        connection.execute(SUPERUSER_ONLY_OBJECTS)
    assert run_backup("postgres").success
    assert main(["drill", "postgres", "--json"]) == 0
    drilled = json.loads(capsys.readouterr().out)
    assert drilled["databases"][source_db]["row_counts"]["public.tagged"] == 50


def test_the_redis_server_that_parses_a_snapshot_runs_without_root():
    with throwaway_server() as server:
        pid = server.client().info("server")["process_id"]
        owner = os.stat(f"/proc/{pid}").st_uid
    assert owner == pwd.getpwnam(UNPRIVILEGED_USER).pw_uid != 0


def test_the_drill_s_postgresql_runs_as_a_user_that_reads_nothing_of_ours_and_no_network():
    with throwaway_cluster(None, print) as cluster, cluster.connect() as connection:
        pid = connection.execute("SELECT pg_backend_pid()").fetchone()[0]
        owner = os.stat(f"/proc/{pid}").st_uid
        network = os.readlink(f"/proc/{pid}/ns/net")
    assert owner == pwd.getpwnam(UNPRIVILEGED_USER).pw_uid != 0
    assert network != os.readlink("/proc/self/ns/net")
