"""Consul against an HTTP double of its documented API (no Consul binary installs here)."""

import io
import json
import tarfile

import pytest
from dagster import DagsterInstance

from backup_pipelines.cli import main
from backup_pipelines.definitions import build_definitions
from backup_pipelines.settings import load_settings
from backup_pipelines.snapshot import store_from_settings
from backup_pipelines_tests.conftest import commit_snapshot, flip_byte
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


def run_backup_job():
    defs = build_definitions(load_settings())
    return defs.resolve_job_def("consul_backup_job").execute_in_process(
        instance=DagsterInstance.ephemeral(), raise_on_error=False
    )


def test_wiped_kv_comes_back_equal(store_env, consul, capsys):
    original = kv_of(consul)
    result = run_backup_job()
    assert result.success
    [materialization] = result.asset_materializations_for_node("consul_backup")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["kv_keys"] == 304
    assert metadata["snapshot_index"] > 300 and metadata["consul_version"] == "1.17.0-double"
    every_log = " ".join(str(event.message) for event in result.all_events)
    assert ROOT_TOKEN not in json.dumps(metadata, default=str) + every_log
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["integrity"].passed and checks["archive_structure"].passed
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
    assert run_backup_job().success
    fresh = ConsulDouble({ROOT_TOKEN: MANAGEMENT})
    try:
        command = ["restore", "consul", "--http-addr", fresh.url, "--snapshot-restore"]
        assert main(command) == 0
        assert kv_of(fresh) == kv_of(consul)
    finally:
        fresh.close()


def test_a_wrong_token_fails_the_run_at_once(backup_env, consul, monkeypatch):
    monkeypatch.setenv("BACKUP_CONSUL_TOKEN", "stale-token-never-shown")
    result = run_backup_job()
    assert not result.success
    failures = [event for event in result.all_events if event.is_step_failure]
    assert len(failures) == 1 and not any(e.is_step_up_for_retry for e in result.all_events)
    message = str(failures[0].step_failure_data.user_failure_data.description)
    assert "refused GET /v1/kv/: ACL not found (check BACKUP_CONSUL_TOKEN)" in message
    assert "stale-token-never-shown" not in message
    assert store_from_settings(load_settings()).list_snapshots("consul") == []


def test_a_token_that_cannot_see_every_key_fails_the_backup(backup_env, consul, monkeypatch):
    monkeypatch.setenv("BACKUP_CONSUL_TOKEN", PUBLIC_TOKEN)
    result = run_backup_job()
    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    message = str(failure.step_failure_data.user_failure_data.description)
    assert "the token cannot see every key" in message and "silently incomplete" in message
    assert store_from_settings(load_settings()).list_snapshots("consul") == []


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
    settings = load_settings()
    commit_snapshot(
        store_from_settings(settings),
        settings.staging_dir,
        {"consul.snap": archive.getvalue(), "kv.json": b"[]"},
        source="consul",
    )
    assert main(["verify", "consul", "--deep"]) == 1
    assert "consul.snap: state.bin does not match SHA256SUMS" in capsys.readouterr().err


def test_a_damaged_kv_export_never_touches_the_target(backup_env, consul, capsys):
    assert run_backup_job().success
    store = store_from_settings(load_settings())
    flip_byte(store, store.find("consul").snapshot_id, "kv.json.zst", offset=30, source="consul")
    before = kv_of(consul)
    assert main(["restore", "consul", "--http-addr", consul.url, "--force"]) == 1
    assert "stored bytes do not match the manifest" in capsys.readouterr().err
    assert kv_of(consul) == before
