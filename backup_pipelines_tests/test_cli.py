"""The backup-pipelines command: listing, verifying, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyrage import x25519

from backup_pipelines.cli import main
from backup_pipelines.cli.parser import command_line_secrets
from backup_pipelines_tests.conftest import (
    S3_SECRET_KEY,
    commit_snapshot,
    flip_byte,
    runtime_from_env,
)


def make_snapshots(count: int, source: str = "redis"):
    runtime = runtime_from_env()
    store = runtime.store
    return store, [
        commit_snapshot(
            store,
            runtime.staging.directory,
            {"dump.rdb": b"REDIS0011" + bytes([n])},
            source=source,
            run_id=f"{n:08x}-run",
        )
        for n in range(count)
    ]


def test_snapshots_lists_newest_first_with_locations(store_env, capsys):
    _, made = make_snapshots(3)
    assert main(["snapshots", "redis", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["snapshot_id"] for m in listed] == [s.snapshot_id for s in reversed(made)]
    assert listed[0]["location"] == made[-1].location
    assert listed[0]["format"] == "backup-pipelines-snapshot"
    assert listed[0]["files"][0]["name"] == "dump.rdb.zst"

    assert main(["snapshots"]) == 0
    header, *rows, totals = capsys.readouterr().out.splitlines()
    assert header.split() == ["SOURCE", "SNAPSHOT", "SIZE", "FILES", "LOCATION"]
    assert len(rows) == 3 and rows[0].startswith("redis ")
    assert totals.startswith("3 snapshots, ") and "in " in totals


def test_verify_is_sound_until_a_byte_flips(store_env, capsys):
    store, [snapshot] = make_snapshots(1)
    assert main(["verify", "redis"]) == 0
    assert "verified, 1 file, " in capsys.readouterr().out

    flip_byte(store, snapshot.snapshot_id, "dump.rdb.zst", offset=5, source="redis")
    assert main(["verify", "redis", "--snapshot", snapshot.snapshot_id]) == 1
    err = capsys.readouterr().err
    assert f"redis/{snapshot.snapshot_id}: dump.rdb.zst: sha256 does not match" in err


def test_verify_without_a_source_verifies_every_source(backup_env, capsys):
    store, [redis] = make_snapshots(1)
    _, [consul] = make_snapshots(1, source="consul")
    assert main(["verify"]) == 0
    output = capsys.readouterr()
    assert f"redis/{redis.snapshot_id}: verified" in output.out
    assert f"consul/{consul.snapshot_id}: verified" in output.out
    assert "postgres: there is no complete postgres snapshot" in output.err
    flip_byte(store, consul.snapshot_id, "dump.rdb.zst", offset=5, source="consul")
    assert main(["verify"]) == 1
    assert main(["verify", "--snapshot", redis.snapshot_id]) == 2


def test_the_command_names_the_local_store_without_warning_before_every_answer(backup_env):
    command = [str(Path(sys.executable).with_name("backup-pipelines")), "snapshots"]
    plain = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    assert plain.stderr == f"no complete snapshots in the local store {backup_env}\n"
    as_json = subprocess.run([*command, "--json"], capture_output=True, text=True, env=os.environ)
    assert as_json.stderr == "" and json.loads(as_json.stdout) == []


def test_verify_of_a_missing_snapshot_fails(backup_env, capsys):
    assert main(["verify", "postgres"]) == 1
    assert "there is no complete postgres snapshot" in capsys.readouterr().err
    make_snapshots(1)
    assert main(["verify", "redis", "--snapshot", "20200101T000000Z-deadbeef"]) == 1
    assert "backup-pipelines snapshots redis" in capsys.readouterr().err


def test_unreachable_s3_is_one_clear_line(backup_env, monkeypatch, capsys):
    monkeypatch.setenv("BACKUP_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("BACKUP_S3_BUCKET", "backups")
    monkeypatch.setenv("BACKUP_S3_ACCESS_KEY", "AKIAEXAMPLE")
    monkeypatch.setenv("BACKUP_S3_SECRET_KEY", S3_SECRET_KEY)
    assert main(["snapshots"]) == 1
    err = capsys.readouterr().err
    assert "S3 listing of backups/postgres/ failed at s3://backups/backups/" in err
    assert S3_SECRET_KEY not in err


def test_bad_configuration_exits_2_with_one_line_and_no_traceback(backup_env):
    env = {**os.environ, "BACKUP_REDIS_PORT": "not-a-port"}
    command = Path(sys.executable).with_name("backup-pipelines")
    result = subprocess.run([command, "snapshots"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: invalid configuration: BACKUP_REDIS_PORT: "
        "Input should be a valid integer, unable to parse string as an integer"
    )


def test_secrets_typed_on_the_command_line_are_masked_in_its_errors():
    argv = [
        "restore", "rabbitmq", "--management-url", "http://admin:url-pw@broker:15672",
        "--password", "flag-pw", "--password=inline-pw", "--vhost", "crm",
    ]  # fmt: skip
    found = command_line_secrets(argv)
    assert {"url-pw", "flag-pw", "inline-pw"} <= set(found)
    assert "crm" not in found and "rabbitmq" not in found


def test_usage_errors_exit_2_and_failures_exit_1(backup_env, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["verify", "mysql"])
    assert exit_.value.code == 2
    assert main(["verify", "consul", "--deep"]) == 1  # no snapshot yet: a failure, not usage
    make_snapshots(1, source="consul")  # holds dump.rdb, not Consul's artifacts
    assert main(["verify", "consul", "--deep"]) == 1
    assert "has no consul.snap artifact" in capsys.readouterr().err
    assert main(["restore", "documents", "--target-dir", " "]) == 2  # not the current directory
    assert "error: --target-dir: must not be empty" in capsys.readouterr().err
    assert main(["restore", "redis"]) == 2
    assert "either a server (--target-url) or a directory (--output-dir)" in capsys.readouterr().err


def test_an_identity_file_that_is_not_one_is_a_clear_configuration_error(
    backup_env, monkeypatch, tmp_path, capsys
):
    identity = x25519.Identity.generate()
    runtime = runtime_from_env()
    commit_snapshot(
        runtime.store,
        runtime.staging.directory,
        {"dump.rdb": b"REDIS0011"},
        source="redis",
        recipients=[identity.to_public()],
    )
    binary = tmp_path / "key.bin"
    binary.write_bytes(os.urandom(64) + b"\xff\xfe")
    binary.chmod(0o600)
    monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(binary))
    assert main(["restore", "redis", "--output-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"error: BACKUP_AGE_IDENTITY_FILE: {binary} is not an age identity file (it is not "
        "text; age-keygen writes one 'AGE-SECRET-KEY-...' line)\n"
    )

    key = tmp_path / "identity.txt"
    key.write_text(f"{identity}\n")
    key.chmod(0o644)  # as a careless copy leaves it: every user of the host reads it
    monkeypatch.setenv("BACKUP_AGE_IDENTITY_FILE", str(key))
    assert main(["restore", "redis", "--output-dir", str(tmp_path / "out")]) == 2
    said = capsys.readouterr().err
    assert "can be read by every user (mode 0644)" in said and f"chmod 600 {key}" in said
    assert not (tmp_path / "out").exists()
    key.chmod(0o640)  # a group of its own may read it (a verifier account)
    main(["restore", "redis", "--output-dir", str(tmp_path / "out")])
    said = capsys.readouterr().err  # decrypted: only this test's RDB, a header alone, fails
    assert "every user" not in said and "redis-check-rdb failed" in said
