"""Whole-system recovery to a moment (`recover --at T --into FILE`, `recover_job`): every
source backed up before and after T, then recovered to T into throwaway targets, each of
which must hold its state at T and nothing written after it."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from backup_pipelines.cli import main
from backup_pipelines.processes import free_loopback_port
from backup_pipelines.snapshot.manifest import format_utc
from backup_pipelines_tests.archiving_cluster import Server, owned_directory, restore_dir
from backup_pipelines_tests.conftest import failed_at_once, metadata_of, run_backup, run_job
from backup_pipelines_tests.consul_double import MANAGEMENT as CONSUL_MANAGEMENT
from backup_pipelines_tests.consul_double import ConsulDouble
from backup_pipelines_tests.postgres_fixtures import connect, scratch_databases, unique_name
from backup_pipelines_tests.redis_fixtures import (
    assert_same_data,
    fill_crm_data,
    redis_process,
    server_state,
)
from backup_pipelines_tests.test_consul import kv_of
from backup_pipelines_tests.test_documents import tree_state
from backup_pipelines_tests.test_events import EventQueue
from backup_pipelines_tests.test_pitr import pitr_cluster
from backup_pipelines_tests.test_rabbitmq import MANAGEMENT, admin, vhost_state

CONSUL_TOKEN = "consul-token-never-shown"
REDIS_PASSWORD = "redis-pw-never-shown"
TARGET_REDIS_PASSWORD = "target-redis-pw-never-shown"
RESTIC_PASSWORD = "restic-pw-never-shown"
SECRETS = (CONSUL_TOKEN, REDIS_PASSWORD, TARGET_REDIS_PASSWORD, RESTIC_PASSWORD)
ORDER = ["postgres", "postgres_base", "redis", "rabbitmq", "consul", "documents"]


@dataclass
class Systems:
    """The live systems the test backs up, and a throwaway target for each."""

    cluster: Server
    database: str
    redis: object
    target_redis: object
    vhost: str
    consul: ConsulDouble
    target_consul: ConsulDouble
    documents: Path
    home: Path

    def write(self, phase: str, first: int, last: int) -> None:
        """Data in every system, told apart by `phase`."""
        self.cluster.query(
            f"INSERT INTO orders SELECT n, '{phase}' FROM generate_series({first}, {last}) n",
            self.database,
        )
        self.redis.set(f"crm:{phase}", phase)
        admin("PUT", f"queues/{quote(self.vhost, safe='')}/crm.{phase}", {"durable": True})
        self.consul.state.put(f"crm/{phase}", phase.encode())
        (self.documents / f"{phase}.txt").write_bytes(random.randbytes(5000))


@pytest.fixture
def systems(backup_env, broker_definitions, monkeypatch) -> Iterator[Systems]:
    """PostgreSQL archiving its WAL (logical and base backups of one database), Redis, a vhost
    of the test's own on the machine's RabbitMQ, Consul (the double) and a documents tree,
    with the BACKUP_* environment pointing at all of them and a local store."""
    database, vhost = unique_name("bp_recover"), unique_name("bp-recover")
    with ExitStack() as stack:
        cluster = stack.enter_context(pitr_cluster(monkeypatch))
        cluster.query(f"CREATE DATABASE {database}")
        cluster.query("CREATE TABLE orders (id int PRIMARY KEY, phase text)", database)
        monkeypatch.setenv("BACKUP_POSTGRES_DATABASES", database)
        stack.enter_context(scratch_databases(database))  # the logical restore's, on :5432
        home = owned_directory("recover-")
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        source = stack.enter_context(redis_process(home / "redis", REDIS_PASSWORD))
        target = stack.enter_context(redis_process(home / "redis-target", TARGET_REDIS_PASSWORD))
        fill_crm_data(source)
        monkeypatch.setenv(
            "BACKUP_REDIS_PORT", str(source.connection_pool.connection_kwargs["port"])
        )
        monkeypatch.setenv("BACKUP_REDIS_HOST", "127.0.0.1")
        monkeypatch.setenv("BACKUP_REDIS_PASSWORD", REDIS_PASSWORD)
        admin("PUT", f"vhosts/{quote(vhost, safe='')}")
        stack.callback(
            requests.delete,
            f"{MANAGEMENT}/api/vhosts/{quote(vhost, safe='')}",
            auth=("guest", "guest"),
            timeout=30,
        )
        consul = ConsulDouble({CONSUL_TOKEN: CONSUL_MANAGEMENT})
        target_consul = ConsulDouble({CONSUL_TOKEN: CONSUL_MANAGEMENT})
        stack.callback(consul.close)
        stack.callback(target_consul.close)
        monkeypatch.setenv("BACKUP_CONSUL_HTTP_ADDR", consul.url)
        monkeypatch.setenv("BACKUP_CONSUL_TOKEN", CONSUL_TOKEN)
        documents = home / "documents"
        documents.mkdir()
        monkeypatch.setenv("BACKUP_DOCUMENTS_ROOT", str(documents))
        monkeypatch.setenv("BACKUP_RESTIC_PASSWORD", RESTIC_PASSWORD)
        monkeypatch.setenv("TARGET_REDIS_PASSWORD", TARGET_REDIS_PASSWORD)
        yield Systems(
            cluster, database, source, target, vhost, consul, target_consul, documents, home
        )


def back_up_everything() -> dict[str, str]:
    """A snapshot of every source; their ids."""
    ids = {}
    for source in ORDER:
        result = run_job(f"{source}_backup_job")
        assert result.success, source
        ids[source] = metadata_of(result, source)["snapshot_id"]
    return ids


def into_file(path: Path, targets: dict[str, dict]) -> Path:
    path.write_text(json.dumps(targets))  # JSON is YAML
    return path


def recover(*args: str) -> int:
    return main(["recover", *args])


@pytest.mark.slow
def test_every_system_comes_back_as_it_was_at_the_moment(systems, tmp_path, capsys):
    systems.write("first", 1, 100)
    before = back_up_everything()
    time.sleep(1.1)  # manifests keep whole seconds: the last snapshot ends a second before
    systems.cluster.query(  # after every snapshot, before the moment: only the WAL has it
        "INSERT INTO orders SELECT n, 'between' FROM generate_series(101, 150) n",
        systems.database,
    )
    [(moment,)] = systems.cluster.query("SELECT clock_timestamp()")
    at_moment = {
        "rabbitmq": vhost_state(systems.vhost),
        "consul": kv_of(systems.consul),
        "documents": tree_state(systems.documents),
    }
    systems.write("after", 151, 170)
    after = back_up_everything()
    systems.cluster.switch_wal()  # the archive now reaches past the moment

    pg_port = free_loopback_port()
    data_dir = restore_dir()
    targets = {
        "postgres": {"target_dsn": "postgresql://postgres@127.0.0.1:5432/postgres"},
        "postgres_base": {"target_dir": str(data_dir), "port": pg_port},
        "redis": {
            "target_url": "redis://:${TARGET_REDIS_PASSWORD}@127.0.0.1:"
            f"{systems.target_redis.connection_pool.connection_kwargs['port']}"
        },
        "rabbitmq": {"management_url": MANAGEMENT, "vhost": systems.vhost},
        "consul": {"http_addr": systems.target_consul.url},
        "documents": {"target_dir": str(tmp_path / "documents")},
    }
    into = into_file(tmp_path / "into.yaml", targets)
    at = moment.astimezone(UTC).isoformat()

    assert recover("--at", at, "--into", str(into), "--plan", "--json") == 0
    plan = json.loads(capsys.readouterr().out)
    planned = {step["source"]: step for step in plan["sources"]}
    assert [step["source"] for step in plan["sources"]] == ORDER
    assert {name: step["snapshot_id"] for name, step in planned.items()} == before
    assert all(step["outcome"] == "planned" for step in planned.values())
    assert planned["postgres_base"]["recovery_point"] == format_utc(moment)
    assert planned["postgres_base"]["before_at_s"] == 0
    assert planned["postgres"]["before_at_s"] > 0 and planned["redis"]["size_bytes"] > 0
    assert not data_dir.exists() and systems.target_consul.state.kv == {}  # nothing restored

    admin("DELETE", f"vhosts/{quote(systems.vhost, safe='')}")  # the broker's throwaway target
    events = EventQueue(os.environ["BACKUP_RABBITMQ_URL"])
    assert recover("--at", at, "--into", str(into)) == 0
    output = capsys.readouterr()
    restored = Server(data_dir, pg_port, data_dir / "recovery.log")
    try:
        assert restored.query(
            "SELECT min(id), max(id), count(*), count(*) FILTER (WHERE phase = 'after') "
            "FROM orders",
            systems.database,
        ) == [(1, 150, 150, 0)]  # exactly what was committed before the moment
    finally:
        restored.stop()
    with connect(systems.database) as logical:
        assert logical.execute("SELECT min(id), max(id) FROM orders").fetchall() == [(1, 100)]
    redis_at_moment = server_state(systems.redis)  # now: the TTLs count down alike
    del redis_at_moment[("db0", b"crm:after")]
    assert_same_data(server_state(systems.target_redis), redis_at_moment)
    assert vhost_state(systems.vhost) == at_moment["rabbitmq"]
    assert kv_of(systems.target_consul) == at_moment["consul"]
    assert tree_state(tmp_path / "documents") == at_moment["documents"]

    for source in ORDER:
        assert f"{source} " in output.out and before[source] in output.out
    assert not any(secret in output.out + output.err for secret in SECRETS)
    restored_events = [event for _, _, event in events.for_run("", count=6)]
    events.connection.close()
    assert sorted(
        e["source"] for e in restored_events if e["event"] == "backup.restored"
    ) == sorted(ORDER)
    assert main(["audit", "--json"]) == 0
    [record] = [r for r in json.loads(capsys.readouterr().out) if r["operation"] == "recover"]
    assert record["outcome"] == "succeeded"
    assert sorted(record["snapshots"]) == sorted(f"{s}/{before[s]}" for s in ORDER)
    assert f"to {format_utc(moment)}" in record["detail"]
    assert not set(after.values()) & {step["snapshot_id"] for step in planned.values()}


@pytest.mark.slow
def test_a_failing_source_stops_the_recovery_and_later_targets_stay_untouched(
    systems, tmp_path, capsys
):
    systems.write("first", 1, 10)
    for source in ("postgres", "redis", "consul", "documents"):
        assert run_backup(source).success
    unreachable = free_loopback_port()  # nothing listens there
    targets = {
        "documents": {"target_dir": str(tmp_path / "documents")},
        "consul": {"http_addr": systems.target_consul.url},
        "redis": {"target_url": f"redis://127.0.0.1:{unreachable}"},
        "postgres": {"target_dsn": "postgresql://postgres@127.0.0.1:5432/postgres"},
    }
    into = into_file(tmp_path / "into.yaml", targets)
    at = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    assert recover("--at", at, "--into", str(into), "--json") == 1
    output = capsys.readouterr()
    report = {step["source"]: step for step in json.loads(output.out)["sources"]}
    assert report["postgres"]["outcome"] == "restored"
    assert report["redis"]["outcome"] == "failed" and str(unreachable) in report["redis"]["reason"]
    assert report["consul"]["outcome"] == report["documents"]["outcome"] == "not started"
    assert report["rabbitmq"]["outcome"] == "skipped"
    assert "error: redis failed" in output.err and "not restored: consul, documents" in output.err
    assert systems.target_consul.state.kv == {} and not (tmp_path / "documents").exists()
    with connect(systems.database) as logical:
        assert logical.execute("SELECT count(*) FROM orders").fetchall() == [(10,)]


@pytest.fixture
def consul_pair(backup_env, monkeypatch) -> Iterator[tuple[ConsulDouble, ConsulDouble]]:
    """A Consul (the double) backed up by the environment, and an empty one to recover into."""
    source = ConsulDouble({CONSUL_TOKEN: CONSUL_MANAGEMENT})
    target = ConsulDouble({CONSUL_TOKEN: CONSUL_MANAGEMENT})
    source.state.put("crm/config", b"before")
    monkeypatch.setenv("BACKUP_CONSUL_HTTP_ADDR", source.url)
    monkeypatch.setenv("BACKUP_CONSUL_TOKEN", CONSUL_TOKEN)
    yield source, target
    source.close()
    target.close()


def test_the_into_file_is_checked_whole_before_anything_is_read(backup_env, tmp_path, capsys):
    into = tmp_path / "into.yaml"
    into.write_text(
        "mysql: {target_dsn: x}\n"
        "redis: {target_url: 'redis://:hunter2-never-shown@cache:6379', target_time: now}\n"
        "consul: {http_adr: 'http://consul:8500'}\n"
        "rabbitmq: {management_url: 'http://mq:15672', password: '${RECOVER_UNSET}'}\n"
        "documents: {target_dir: /srv/documents, target_dir: /srv/other}\n"
    )
    assert recover("--at", "2026-01-01T00:00:00Z", "--into", str(into), "--plan") == 2
    said = capsys.readouterr().err
    assert "'mysql' is not a source" in said
    assert "redis.target_time: not an option here: --at sets the moment" in said
    assert "redis.target_url: holds a literal password" in said
    assert "'consul.http_adr': not an option of consul" in said and "http_addr" in said
    assert "rabbitmq.password: ${RECOVER_UNSET} is not set" in said
    assert "documents: 'target_dir' is declared twice" in said
    assert "hunter2" not in said
    missing = tmp_path / "missing.yaml"
    assert recover("--at", "2026-01-01", "--into", str(missing)) == 2
    assert "--into names" in capsys.readouterr().err


def test_a_moment_before_every_snapshot_restores_nothing(consul_pair, tmp_path, capsys):
    _, target = consul_pair
    assert run_backup("consul").success
    into = into_file(tmp_path / "into.yaml", {"consul": {"http_addr": target.url}})
    assert recover("--at", "2001-01-01T00:00:00", "--into", str(into)) == 1
    said = capsys.readouterr()
    assert "error: consul unusable: no consul snapshot" in said.err
    assert "was complete at 2001-01-01T00:00:00Z" in said.err and target.state.kv == {}
    assert "documents skipped not in the into file" in " ".join(said.out.split())
    assert main(["audit", "--json"]) == 0
    [record] = [r for r in json.loads(capsys.readouterr().out) if r["operation"] == "recover"]
    assert record["outcome"] == "failed" and record["error"].startswith("consul: no consul")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert recover("--at", later, "--into", str(into), "--plan") == 2
    assert "lies ahead of this host's clock" in capsys.readouterr().err


def recover_run(config: dict, instance=None):
    return run_job("recover_job", instance=instance, run_config=config)


def test_recover_job_shows_the_plan_then_recovers_from_the_ui(consul_pair, tmp_path, monkeypatch):
    source, target = consul_pair
    snapshot = metadata_of(run_backup("consul"), "consul")["snapshot_id"]
    time.sleep(1.1)  # the manifest keeps whole seconds
    at = datetime.now(UTC).isoformat()
    into = {"consul": {"http_addr": target.url}}

    planned = recover_run({"at": at, "into": into, "plan": True})
    assert planned.success and target.state.kv == {}
    [plan] = [
        event.event_specific_data.metadata["plan"].value
        for event in planned.all_events
        if event.event_type_value == "STEP_OUTPUT" and event.step_key == "plan_recovery"
    ]
    assert f"| consul | planned | {snapshot} |" in plan and "| documents | skipped |" in plan

    recovered = recover_run({"at": at, "into": into})
    assert recovered.success, failed_at_once(recovered)
    assert kv_of(target) == kv_of(source)

    refused = {
        "rabbitmq": {"management_url": MANAGEMENT, "password": "x"},
        "documents": {"target_dir": str(tmp_path / "documents")},
        "consul": {"http_addr": target.url, "force": True},
    }
    for name, entry in refused.items():
        result = recover_run({"at": at, "into": {name: entry}})
        assert not result.success
        said = failed_at_once(result)
        assert {
            "rabbitmq": "a secret is not taken from run config",
            "documents": "BACKUP_RESTORE_ROOTS",
            "consul": "set 'confirm' to the target",
        }[name] in said
    monkeypatch.setenv("BACKUP_RESTORE_ROOTS", str(tmp_path))
    confirmed = {"http_addr": target.url, "force": True, "confirm": target.url}
    allowed = recover_run(
        {"at": at, "into": {"consul": confirmed, "documents": {"target_dir": str(tmp_path / "d")}}}
    )
    assert not allowed.success  # no documents snapshot: the plan stops it, nothing restored
    assert "documents cannot be recovered" in failed_at_once(allowed)
