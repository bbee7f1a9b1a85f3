"""Consul against an HTTP double of its documented API (no Consul binary installs here)."""

import io
import json
import tarfile
import time

import pytest
from dagster import DagsterInstance

from backup_pipelines.cli import main
from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines_tests.conftest import (
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
from backup_pipelines_tests.consul_double import MANAGEMENT, ConsulDouble

ROOT_TOKEN = "root-token-never-shown"
PUBLIC_TOKEN = "public-reader-token"


def kv_of(double: ConsulDouble) -> dict[str, tuple[int, bytes]]:
    return {key: (flags, value) for key, (flags, value, _, _) in double.state.kv.items()}


@pytest.fixture
def consul(backup_env, monkeypatch):
    """A Consul double full of CRM configuration, and the environment pointing at it."""
    double = ConsulDouble({ROOT_TOKEN: MANAGEMENT, PUBLIC_TOKEN: "public/"})
    for n in range(300):
        double.state.put(f"crm/services/svc-{n:03d}/config", json.dumps({"replicas": n}).encode())
    double.state.put("crm/binary", bytes(range(256)), flags=7)
    double.state.put("crm/конфиг/ключ", "значение — 東京".encode(), flags=42)
    double.state.put("crm/empty", b"")
    double.state.put("public/motd", b"hello")
    monkeypatch.setenv("BACKUP_CONSUL_HTTP_ADDR", double.url)
    monkeypatch.setenv("BACKUP_CONSUL_TOKEN", ROOT_TOKEN)
    yield double
    double.close()


def test_wiped_kv_comes_back_equal(store_env, consul, capsys):
    original = kv_of(consul)
    result = run_backup("consul")
    assert result.success
    metadata = metadata_of(result, "consul")
    assert metadata["kv_keys"] == 304
    assert metadata["snapshot_index"] > 300 and metadata["consul_version"] == "1.17.0-double"
    every_log = " ".join(str(event.message) for event in result.all_events)
    assert ROOT_TOKEN not in json.dumps(metadata, default=str) + every_log
    assert checks_of(result)["integrity"].passed
    drilled = verification_of(run_verification("consul"), "consul")
    assert drilled["passed"] and drilled["kv_keys"] == 304 and drilled["warnings"] == []
    assert drilled["archive_members"] == ["meta.json", "state.bin"]
    assert main(["verify", "consul", "--deep"]) == 0

    consul.state.kv.clear()
    assert main(["restore", "consul", "--http-addr", consul.url]) == 0
    assert kv_of(consul) == original

    consul.state.put("crm/stray", b"must go")
    assert main(["restore", "consul", "--http-addr", consul.url]) == 1
    assert "already holds 305 keys; add --force" in capsys.readouterr().err
    assert main(["restore", "consul", "--http-addr", consul.url, "--force"]) == 0
    assert kv_of(consul) == original
    output = capsys.readouterr()
    assert ROOT_TOKEN not in output.out + output.err


def test_snapshot_restore_rebuilds_a_whole_cluster(backup_env, consul):
    assert run_backup("consul").success
    fresh = ConsulDouble({ROOT_TOKEN: MANAGEMENT})
    try:
        command = ["restore", "consul", "--http-addr", fresh.url, "--snapshot-restore"]
        assert main(command) == 0
        assert kv_of(fresh) == kv_of(consul)
    finally:
        fresh.close()


def restore_config(**config) -> dict:
    return {"ops": {"restore_snapshot": {"config": config}}}


def test_restore_job_restores_with_the_token_it_was_built_with(backup_env, consul, monkeypatch):
    """The runtime's settings, not whatever the environment says by the time the op runs."""
    assert run_backup("consul").success
    defs = build_definitions(runtime_from_env())
    monkeypatch.setenv("BACKUP_CONSUL_TOKEN", "not-the-token")
    fresh = ConsulDouble({ROOT_TOKEN: MANAGEMENT})
    try:
        result = defs.resolve_job_def("restore_job").execute_in_process(
            run_config=restore_config(source="consul", target=fresh.url),
            instance=DagsterInstance.ephemeral(),
        )
        assert result.success
        assert kv_of(fresh) == kv_of(consul)
    finally:
        fresh.close()


def test_restore_job_refuses_options_of_another_source(backup_env, consul):
    assert run_backup("consul").success
    config = restore_config(
        source="consul", target=consul.url, database="crm", force=True, confirm=consul.url
    )
    message = failed_at_once(run_job("restore_job", run_config=config), ROOT_TOKEN)
    assert message.startswith("database does not apply to consul: its options are ")


@pytest.mark.parametrize(
    ("address", "cause"),
    [("http://127.0.0.1:1", "connection refused"), ("http://consul.invalid:8500", "unknown host")],
)
def test_an_unreachable_agent_fails_a_run_by_hand_in_one_line(
    backup_env, monkeypatch, address, cause
):
    """An operator pressing Materialize waits for an answer, not for three retries."""
    monkeypatch.setenv("BACKUP_CONSUL_HTTP_ADDR", address)
    started = time.monotonic()
    message = failed_at_once(run_backup("consul"))
    assert time.monotonic() - started < 60
    assert message.startswith(
        f"cannot reach Consul at {address}: {cause}; check BACKUP_CONSUL_HTTP_ADDR (not retried"
    )


def test_a_scheduled_run_keeps_its_backoff_and_ends_on_the_same_line(backup_env, monkeypatch):
    monkeypatch.setenv("BACKUP_CONSUL_HTTP_ADDR", "http://127.0.0.1:1")
    result = run_job("consul_backup_job", tags={"dagster/schedule_name": "consul_backup_schedule"})
    assert not result.success
    assert sum(event.is_step_up_for_retry for event in result.all_events) == 3
    [failure] = [event for event in result.all_events if event.is_step_failure]
    assert failure.step_failure_data.user_failure_data.description == (
        "cannot reach Consul at http://127.0.0.1:1: connection refused; "
        "check BACKUP_CONSUL_HTTP_ADDR"
    )


def test_a_wrong_token_fails_the_run_at_once(backup_env, consul, monkeypatch):
    monkeypatch.setenv("BACKUP_CONSUL_TOKEN", "stale-token-never-shown")
    message = failed_at_once(run_backup("consul"), "stale-token-never-shown")
    assert "refused GET /v1/kv/: ACL not found (check BACKUP_CONSUL_TOKEN)" in message
    assert store_from_env().list_snapshots("consul") == []


def test_a_token_that_cannot_see_every_key_fails_the_backup(backup_env, consul, monkeypatch):
    monkeypatch.setenv("BACKUP_CONSUL_TOKEN", PUBLIC_TOKEN)
    message = failed_at_once(run_backup("consul"), PUBLIC_TOKEN)
    assert "the token cannot see every key" in message and "silently incomplete" in message
    assert store_from_env().list_snapshots("consul") == []


def test_deep_verify_finds_an_archive_whose_sums_do_not_match(backup_env, consul, capsys):
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, data in (
            ("state.bin", b"tampered"),
            ("SHA256SUMS", b"0" * 64 + b"  state.bin\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    runtime = runtime_from_env()
    commit_snapshot(
        runtime.store,
        runtime.staging.directory,
        {"consul.snap": archive.getvalue(), "kv.json": b"[]"},
        source="consul",
    )
    assert main(["verify", "consul", "--deep"]) == 1
    assert "consul.snap: state.bin does not match SHA256SUMS" in capsys.readouterr().err


def test_a_damaged_kv_export_never_touches_the_target(backup_env, consul, capsys):
    assert run_backup("consul").success
    store = store_from_env()
    flip_byte(store, store.find("consul").snapshot_id, "kv.json.zst", offset=30, source="consul")
    before = kv_of(consul)
    assert main(["restore", "consul", "--http-addr", consul.url, "--force"]) == 1
    assert "stored bytes do not match the manifest" in capsys.readouterr().err
    assert kv_of(consul) == before
