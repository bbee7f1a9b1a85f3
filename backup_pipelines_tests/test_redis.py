"""Redis against real redis-server processes: back up, restore into a fresh server, compare."""

import fcntl
import json
import logging
import os
import signal
import subprocess
import threading
import time

import pytest

from backup_pipelines.cli import main
from backup_pipelines.snapshot.staging import BACKUP_LOCK, stage
from backup_pipelines.sources.redis.dump import dump_server
from backup_pipelines.sources.redis.restore import copy_keys
from backup_pipelines.sources.redis.server import RedisServer, RedisUnavailable
from backup_pipelines_tests.conftest import (
    RUN_ID,
    checks_of,
    commit_snapshot,
    failed_at_once,
    flip_byte,
    metadata_of,
    read_manifest_bytes,
    replace_manifest,
    run_backup,
    run_job,
    run_verification,
    runtime_from_env,
    step_failures,
    store_from_env,
    timed_backup,
    verification_of,
)
from backup_pipelines_tests.redis_fixtures import (
    assert_same_data,
    fill_crm_data,
    redis_process,
    server_state,
)

SOURCE_PASSWORD = "source-pw-never-shown"
TARGET_PASSWORD = "target-pw-never-shown"


@pytest.fixture
def source_redis(backup_env, monkeypatch, tmp_path):
    """A password-protected server full of CRM data, with AOF on, and the env pointing at it."""
    data_dir = tmp_path / "redis-source"
    with redis_process(data_dir, SOURCE_PASSWORD, aof=True) as client:
        fill_crm_data(client)
        port = client.connection_pool.connection_kwargs["port"]
        monkeypatch.setenv("BACKUP_REDIS_HOST", "127.0.0.1")
        monkeypatch.setenv("BACKUP_REDIS_PORT", str(port))
        monkeypatch.setenv("BACKUP_REDIS_PASSWORD", SOURCE_PASSWORD)
        monkeypatch.setenv("BACKUP_REDIS_DATA_DIR", str(data_dir))
        yield client


@pytest.fixture
def target_redis(tmp_path):
    with redis_process(tmp_path / "redis-target", TARGET_PASSWORD) as client:
        yield client


def port_of(client) -> int:
    return client.connection_pool.connection_kwargs["port"]


def target_url(client) -> str:
    return f"redis://:{TARGET_PASSWORD}@127.0.0.1:{port_of(client)}"


def test_backup_restores_every_key_ttl_and_function(store_env, source_redis, target_redis, capsys):
    result = run_backup("redis")
    assert result.success

    metadata = metadata_of(result, "redis")
    assert metadata["keys"] == {"db0": 11, "db3": 500, "db15": 1}
    assert metadata["redis_version"].startswith("7.")
    assert metadata["used_memory"] > 0 and metadata["rdb_bytes"] > 0
    assert metadata["aof_files"] >= 2  # Redis 7's manifest and base file at least
    assert SOURCE_PASSWORD not in json.dumps(metadata, default=str)
    assert checks_of(result)["integrity"].passed
    drilled = verification_of(run_verification("redis"), "redis")
    assert drilled["passed"] and drilled["function_libraries"] == 1
    assert drilled["loaded_keys"] == drilled["expected_keys"] == {"db0": 11, "db3": 500, "db15": 1}

    assert main(["verify", "redis", "--deep"]) == 0
    assert main(["restore", "redis", "--target-url", target_url(target_redis)]) == 0
    original = server_state(source_redis)
    assert len(original) == 1 + 512 and original["functions"]
    assert_same_data(server_state(target_redis), original)
    output = capsys.readouterr()
    assert SOURCE_PASSWORD not in output.out + output.err
    assert TARGET_PASSWORD not in output.out + output.err


def test_restore_refuses_a_server_with_keys_and_force_replaces_them(
    backup_env, source_redis, target_redis, capsys
):
    assert run_backup("redis").success
    target_redis.set("stray", "must go")
    command = ["restore", "redis", "--target-url", target_url(target_redis)]

    assert main(command) == 1
    assert "already holds 1 keys and 0 function libraries; add --force" in capsys.readouterr().err
    assert target_redis.get("stray") == b"must go"

    assert main([*command, "--force"]) == 0
    assert target_redis.get("stray") is None
    assert_same_data(server_state(target_redis), server_state(source_redis))


@pytest.mark.parametrize(
    ("forbidden", "path_taken"),
    [
        ((), "(REPLICAOF)"),
        (("REPLICAOF", "SLAVEOF"), "keys restored (MIGRATE)"),
        (("CONFIG",), "keys restored (MIGRATE)"),
    ],
    ids=["replication", "no-replicaof", "no-config"],
)
def test_restore_takes_the_fastest_path_the_target_allows(
    backup_env, source_redis, tmp_path, caplog, forbidden, path_taken
):
    """Managed servers rename REPLICAOF or CONFIG away: the restore falls back to MIGRATE
    from a throw-away server, and the target ends up the same master it was."""
    renamed = tuple(arg for command in forbidden for arg in ("--rename-command", command, ""))
    assert run_backup("redis").success
    with redis_process(tmp_path / "managed", TARGET_PASSWORD, config=renamed) as target:
        if not forbidden:
            target.config_set("masterauth", "the-servers-own")
        with caplog.at_level(logging.INFO):
            assert main(["restore", "redis", "--target-url", target_url(target)]) == 0
        assert path_taken in caplog.text
        assert_same_data(server_state(target), server_state(source_redis))
        assert target.info("replication")["role"] == "master"
        if not forbidden:
            assert target.config_get("masterauth") == {"masterauth": "the-servers-own"}


def test_a_target_that_fails_midway_keeps_what_it_held(backup_env, source_redis, tmp_path, capsys):
    """--force never empties the target first: one that runs out of memory halfway (or dies)
    still holds its keys; once it can take them, it ends holding exactly the snapshot."""
    assert run_backup("redis").success
    managed = ("--rename-command", "REPLICAOF", "", "--rename-command", "SLAVEOF", "")
    with redis_process(tmp_path / "small", TARGET_PASSWORD, config=managed) as target:
        for n in range(20):
            target.set(f"old:{n}", "kept")
        target.config_set("maxmemory-policy", "noeviction")
        target.config_set("maxmemory", target.info("memory")["used_memory"] + 64 * 1024)
        command = ["restore", "redis", "--target-url", target_url(target), "--force"]
        assert main(command) == 1
        said = capsys.readouterr().err
        assert "refused the snapshot's keys (command not allowed when used memory" in said
        assert "fsm:user" not in said  # the keys and values the command carried are data
        assert [target.get(f"old:{n}") for n in range(20)] == [b"kept"] * 20

        target.config_set("maxmemory", 0)
        assert main(command) == 0
        assert target.keys("old:*") == []
        assert_same_data(server_state(target), server_state(source_redis))


def test_restore_job_restores_into_a_running_server(backup_env, source_redis, target_redis):
    assert run_backup("redis").success
    config = {"source": "redis", "target": target_url(target_redis)}
    result = run_job("restore_job", run_config={"ops": {"restore_snapshot": {"config": config}}})
    assert result.success
    assert_same_data(server_state(target_redis), server_state(source_redis))


def test_key_by_key_copy_carries_every_type_ttl_and_database(source_redis, target_redis):
    """The last fallback, for targets MIGRATE cannot reach (TLS): DUMP / RESTORE through us."""
    copy_keys(RedisServer("127.0.0.1", port_of(source_redis), password=SOURCE_PASSWORD),
              RedisServer.from_url(target_url(target_redis)), log=lambda _: None)  # fmt: skip
    original = server_state(source_redis)
    # functions travel separately, with FUNCTION DUMP / RESTORE
    assert_same_data(server_state(target_redis), {**original, "functions": []})


def test_a_server_older_than_the_snapshot_is_refused_before_anything_changes(
    backup_env, source_redis, target_redis, capsys
):
    assert run_backup("redis").success
    store = store_from_env()
    snapshot_id = store.find("redis").snapshot_id
    manifest = json.loads(read_manifest_bytes(store, "redis", snapshot_id))
    manifest["stats"]["redis_version"] = "99.1.0"
    replace_manifest(store, "redis", snapshot_id, json.dumps(manifest).encode())
    target_redis.set("keep", "me")

    assert main(["restore", "redis", "--target-url", target_url(target_redis), "--force"]) == 1
    assert "comes from Redis 99.1.0" in capsys.readouterr().err
    assert target_redis.get("keep") == b"me"


def test_a_replica_is_refused_as_a_target(backup_env, source_redis, target_redis, capsys):
    assert run_backup("redis").success
    target_redis.replicaof("127.0.0.1", port_of(source_redis))
    assert main(["restore", "redis", "--target-url", target_url(target_redis), "--force"]) == 1
    assert "is a replica; restore into its master" in capsys.readouterr().err


def test_output_dir_writes_files_redis_server_loads(backup_env, source_redis, tmp_path, capsys):
    assert run_backup("redis").success
    output = tmp_path / "restored-files"

    assert main(["restore", "redis", "--output-dir", str(output)]) == 0
    subprocess.run(["redis-check-rdb", str(output / "dump.rdb")], check=True, capture_output=True)
    assert (output / "appendonlydir").is_dir()
    assert any(p.name.endswith(".manifest") for p in (output / "appendonlydir").iterdir())

    assert main(["restore", "redis", "--output-dir", str(output)]) == 1
    assert "is not empty; add --force" in capsys.readouterr().err
    with redis_process(output) as loaded:  # the runbook: start redis-server on these files
        assert_same_data(server_state(loaded), server_state(source_redis))


def test_unreachable_server_is_a_clear_retryable_error(staging_dir):
    server = RedisServer("127.0.0.1", 1, password=SOURCE_PASSWORD)
    with pytest.raises(RedisUnavailable) as failure:
        with stage(staging_dir, "redis", RUN_ID) as staged:
            dump_server(staged, server)
    assert str(failure.value).startswith("cannot connect to Redis at 127.0.0.1:1: ")
    assert SOURCE_PASSWORD not in str(failure.value)
    assert list((staging_dir / "redis").iterdir()) == []


def test_wrong_password_fails_the_run_at_once_without_showing_it(
    backup_env, source_redis, monkeypatch
):
    monkeypatch.setenv("BACKUP_REDIS_PASSWORD", "wrong-pw-never-shown")
    message = failed_at_once(run_backup("redis"), "wrong-pw-never-shown")
    assert "refused the credentials" in message and "BACKUP_REDIS_PASSWORD" in message
    assert store_from_env().list_snapshots("redis") == []


def test_a_user_without_sync_permission_gets_told_why(backup_env, source_redis, monkeypatch):
    source_redis.acl_setuser(
        "reader", enabled=True, passwords=["+reader-pw"], keys=["*"], commands=["+@read", "+info"]
    )
    monkeypatch.setenv("BACKUP_REDIS_USERNAME", "reader")
    monkeypatch.setenv("BACKUP_REDIS_PASSWORD", "reader-pw")
    message = failed_at_once(run_backup("redis"), "reader-pw")
    assert "the user needs the +sync and +psync ACL permissions" in message


def test_the_drill_compares_keys_per_database_with_the_manifest(backup_env, source_redis, capsys):
    """Keys expire on a live server (a different count is a warning); a database that held
    keys at backup and comes back empty is a failure."""
    assert run_backup("redis").success
    store = store_from_env()
    snapshot_id = store.find("redis").snapshot_id
    manifest = json.loads(read_manifest_bytes(store, "redis", snapshot_id))
    manifest["stats"]["keys"]["db0"] += 1
    replace_manifest(store, "redis", snapshot_id, json.dumps(manifest).encode())
    assert main(["drill", "redis"]) == 0
    assert "warning: keys per database differ" in capsys.readouterr().err

    manifest["stats"]["keys"]["db7"] = 40
    replace_manifest(store, "redis", snapshot_id, json.dumps(manifest).encode())
    assert main(["drill", "redis", "--json"]) == 1
    output = capsys.readouterr()
    assert json.loads(output.out)["problems"] == ["db7 held 40 keys at backup and none came back"]


def test_deep_verify_finds_an_rdb_that_does_not_parse(backup_env, capsys):
    runtime = runtime_from_env()
    commit_snapshot(
        runtime.store,
        runtime.staging.directory,
        {"dump.rdb": b"REDIS0010" + b"\xfa\x00garbage" * 100},
        source="redis",
    )
    assert main(["verify", "redis"]) == 0
    assert main(["verify", "redis", "--deep"]) == 1
    assert "redis-check-rdb failed" in capsys.readouterr().err


def test_an_rdb_that_does_not_load_fails_the_restore_and_keeps_what_the_target_held(
    backup_env, target_redis, capsys
):
    """Damaged before it was checksummed: the manifest matches, no server can load it (a
    replica sent such an RDB by its master aborts, so it must never reach the target)."""
    runtime = runtime_from_env()
    rdb = b"REDIS0010" + b"\xfa\x00garbage" * 100
    commit_snapshot(runtime.store, runtime.staging.directory, {"dump.rdb": rdb}, source="redis")
    command = ["restore", "redis", "--target-url", target_url(target_redis)]

    assert main(command) == 1
    assert "redis-check-rdb failed" in capsys.readouterr().err
    assert target_redis.info("replication")["role"] == "master"
    target_redis.set("keep", "me")
    assert main([*command, "--force"]) == 1
    assert "redis-check-rdb failed" in capsys.readouterr().err
    assert target_redis.get("keep") == b"me"


def test_a_damaged_snapshot_never_touches_the_target(
    backup_env, source_redis, target_redis, tmp_path, capsys
):
    assert run_backup("redis").success
    store = store_from_env()
    flip_byte(store, store.find("redis").snapshot_id, "dump.rdb.zst", offset=200, source="redis")
    target_redis.set("keep", "me")
    output = tmp_path / "redis-files"
    output.mkdir()
    (output / "dump.rdb").write_bytes(b"the RDB a server runs on")

    assert main(["restore", "redis", "--target-url", target_url(target_redis), "--force"]) == 1
    assert "stored bytes do not match the manifest" in capsys.readouterr().err
    assert target_redis.get("keep") == b"me" and target_redis.dbsize() == 1
    assert main(["restore", "redis", "--output-dir", str(output), "--force"]) == 1
    assert "stored bytes do not match the manifest" in capsys.readouterr().err
    assert [p.name for p in output.iterdir()] == ["dump.rdb"]
    assert (output / "dump.rdb").read_bytes() == b"the RDB a server runs on"


def stop_when_the_sync_begins(server_pid: int, port: int, stopped: threading.Event) -> None:
    """SIGSTOP the server once `redis-cli --rdb` runs against it (its port: another worker's
    backup may run beside): the connection is open and the server, frozen, will never send a
    byte (a hung process, a dead network path)."""
    deadline = time.monotonic() + 60
    ours = f"redis-cli .*-p {port} .*--rdb"
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", ours], capture_output=True)
        if found.returncode == 0:
            os.kill(server_pid, signal.SIGSTOP)
            stopped.set()
            return
        time.sleep(0.01)


def test_a_server_that_hangs_mid_backup_fails_it_within_the_stall_timeout(
    backup_env, monkeypatch, tmp_path
):
    delay = ("--repl-diskless-sync-delay", "3")  # the sync waits: time to freeze the server
    with redis_process(tmp_path / "hung", config=delay) as client:
        fill_crm_data(client)
        monkeypatch.setenv("BACKUP_REDIS_HOST", "127.0.0.1")
        monkeypatch.setenv("BACKUP_REDIS_PORT", str(port_of(client)))
        monkeypatch.setenv("BACKUP_STALL_TIMEOUT_S", "2")
        pid, stopped = client.info("server")["process_id"], threading.Event()
        freezer = threading.Thread(
            target=stop_when_the_sync_begins, args=(pid, port_of(client), stopped)
        )
        freezer.start()
        try:
            result, took = timed_backup("redis")
        finally:
            freezer.join()
            os.kill(pid, signal.SIGCONT)
        assert stopped.is_set(), "the server was never frozen: no test"
        assert not result.success and took < 60
        said = step_failures(result)[-1]
        assert "gave nothing for 2 s and was stopped: is the source hung" in said
        assert not list((backup_env / "redis").glob("*/manifest.json"))


def test_two_backups_of_one_source_launched_outside_the_daemon_run_one_after_another(
    backup_env, source_redis, capfd
):
    """Pools hold only for runs the daemon launches; `dagster asset materialize` twice, or a
    run beside the command's, must still not dump one source twice at once."""
    lock_file = backup_env / ".staging" / "redis" / BACKUP_LOCK
    lock_file.parent.mkdir(parents=True)
    results = []
    with lock_file.open("a") as running:  # a backup of redis in progress
        fcntl.flock(running, fcntl.LOCK_EX)
        second = threading.Thread(target=lambda: results.append(run_backup("redis")))
        second.start()
        second.join(timeout=3)
        assert second.is_alive() and not results  # waiting, not dumping
    second.join(timeout=60)
    assert results and results[0].success
    said = capfd.readouterr().err
    assert "another backup of redis runs on this host: waiting for it to end" in said


def test_an_empty_server_backs_up_with_a_warning_in_the_log_and_the_metadata(
    backup_env, target_redis, monkeypatch, capfd
):
    monkeypatch.setenv("BACKUP_REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("BACKUP_REDIS_PORT", str(port_of(target_redis)))
    monkeypatch.setenv("BACKUP_REDIS_PASSWORD", TARGET_PASSWORD)
    result = run_backup("redis")
    assert result.success
    warning = metadata_of(result, "redis")["warning"]
    assert "holds no keys at all" in warning and "BACKUP_REDIS_PORT" in warning
    logged = [line for line in capfd.readouterr().err.splitlines() if "holds no keys" in line]
    assert logged and " - WARNING - " in logged[0]
