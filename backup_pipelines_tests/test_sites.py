"""Several sites, one Dagster instance: a code location started with `BACKUP_SITE` has its
site's targets alone, the location without one keeps what concerns the whole store, and
requests reach the site that backs the source up."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pika
import pytest

from backup_pipelines.cli import main
from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines.dagster_defs.definition_names import (
    backup_asset_key,
    verification_asset_key,
)
from backup_pipelines.dagster_defs.verification_location import build_verification
from backup_pipelines.events.broker import REQUESTS_QUEUE, site_requests_queue
from backup_pipelines_tests.conftest import runtime_from_env
from backup_pipelines_tests.test_sensors import RequestsSensor, waiting

TARGETS = """\
redis:
  east_cache: {host: 10.1.0.5, port: 6379, site: east}
  west_cache: {host: 10.2.0.5, port: 6379, site: west}
  office_cache: {host: 10.0.0.5, port: 6379}
consul:
  east: {http_addr: "http://10.1.0.9:8500", site: east}
"""


@pytest.fixture
def sites(backup_env, tmp_path, monkeypatch) -> Path:
    targets = tmp_path / "targets.yaml"
    targets.write_text(TARGETS)
    monkeypatch.setenv("BACKUP_TARGETS_FILE", str(targets))
    return targets


def definitions(monkeypatch, site: str | None):
    if site:
        monkeypatch.setenv("BACKUP_SITE", site)
    else:
        monkeypatch.delenv("BACKUP_SITE", raising=False)
    return build_definitions(runtime_from_env())


def asset_keys(defs) -> set:
    return {key for key in defs.resolve_asset_graph().get_all_asset_keys()}


def test_each_site_has_its_own_targets_and_the_rest_stays_in_one_location(sites, monkeypatch):
    east, west, central = (definitions(monkeypatch, s) for s in ("east", "west", None))

    assert backup_asset_key("redis.east_cache") in asset_keys(east)
    assert backup_asset_key("consul.east") in asset_keys(east)
    assert backup_asset_key("redis.west_cache") not in asset_keys(east)
    assert backup_asset_key("redis.office_cache") in asset_keys(central)
    assert backup_asset_key("redis.east_cache") not in asset_keys(central)
    # one UI over every location: no asset is defined twice
    assert not asset_keys(east) & asset_keys(west)
    assert not asset_keys(east) & asset_keys(central) and not asset_keys(west) & asset_keys(central)
    for site in (east, west):
        names = {job.name for job in site.resolve_all_job_defs()}
        assert "retention_job" not in names and "restore_job" in names
    assert "retention_job" in {job.name for job in central.resolve_all_job_defs()}
    restore_sources = east.resolve_job_def("restore_job").run_config_schema.config_type
    assert "redis.west_cache" not in json.dumps(str(restore_sources.fields))


def test_a_site_no_target_names_stops_the_location_naming_the_sites(sites, monkeypatch, capsys):
    monkeypatch.setenv("BACKUP_SITE", "north")
    assert main(["snapshots"]) == 2
    assert (
        "BACKUP_SITE: no target of the targets file is at site 'north' (its sites: east, west)"
        in (capsys.readouterr().err)
    )
    monkeypatch.setenv("BACKUP_SITE", "East-1")
    assert main(["snapshots"]) == 2
    assert "BACKUP_SITE" in capsys.readouterr().err


def test_requests_reach_the_site_that_backs_the_source_up(sites, monkeypatch, requests_channel):
    for site in ("east", "west"):
        requests_channel.queue_declare(site_requests_queue(site), durable=True)
        requests_channel.queue_purge(site_requests_queue(site))
    for body in (
        b'{"source": "redis.east_cache", "reason": "before the upgrade"}',
        b'{"source": "redis", "reason": "every cache"}',
        b'{"source": "redis.office_cache"}',
    ):
        requests_channel.basic_publish(
            "", REQUESTS_QUEUE, body, pika.BasicProperties(message_id=body.decode()[:40])
        )
    monkeypatch.delenv("BACKUP_SITE", raising=False)
    central = RequestsSensor()
    requests = central.tick()
    assert sorted(r.job_name for r in requests) == [
        "redis_backup_job",
        "redis_office_cache_backup_job",
    ]
    assert waiting(requests_channel, site_requests_queue("east")) == 2
    assert waiting(requests_channel, site_requests_queue("west")) == 1
    central.launch(requests)
    assert central.tick() == [] and waiting(requests_channel) == 0

    monkeypatch.setenv("BACKUP_SITE", "east")
    east = RequestsSensor()
    launched = east.tick()
    assert sorted((r.job_name, r.tags["backup/reason"]) for r in launched) == [
        ("redis_backup_job", "every cache"),
        ("redis_east_cache_backup_job", "before the upgrade"),
    ]
    east.launch(launched)
    assert east.tick() == [] and waiting(requests_channel, site_requests_queue("east")) == 0
    monkeypatch.setenv("BACKUP_SITE", "west")
    assert [r.job_name for r in RequestsSensor().tick()] == ["redis_backup_job"]


def test_a_location_loads_without_asking_any_system_anything(backup_env, tmp_path, monkeypatch):
    """A schedule asks whether its system can be backed up when it fires, never while the
    location loads: a server that does not answer would hold the load for its connect timeout,
    once per target."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, and never answers
    asked = threading.Event()
    threading.Thread(target=lambda: silent.accept() and asked.set(), daemon=True).start()
    dsn = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/postgres"
    targets = tmp_path / "targets.yaml"
    targets.write_text(f'postgres_base:\n  crm: {{backup_dsn: "{dsn}"}}\n')
    monkeypatch.setenv("BACKUP_TARGETS_FILE", str(targets))

    build_definitions(runtime_from_env()).get_repository_def()

    assert not asked.wait(0.5)
    silent.close()


def test_the_verification_plane_may_run_per_site(sites, monkeypatch):
    monkeypatch.setenv("BACKUP_SITE", "west")
    verifier = build_verification(runtime_from_env())

    drilled = {key for key in asset_keys(verifier) if key.path[0].endswith("_verification")}
    assert drilled == {verification_asset_key("redis.west_cache")}
