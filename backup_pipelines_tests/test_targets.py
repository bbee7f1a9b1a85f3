"""Several targets per kind, from BACKUP_TARGETS_FILE: two PostgreSQL targets (different
databases), two Redis servers and one tree, each backed up, listed, verified, drilled and
restored on its own, with its own names, schedule, pool and retention."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from backup_pipelines.cli import main
from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines.dagster_defs.definition_names import verification_asset_key
from backup_pipelines.dagster_defs.verification_location import build_verification
from backup_pipelines.events.broker import REQUESTS_QUEUE
from backup_pipelines.runtime import load_runtime
from backup_pipelines.settings import InvalidSettings
from backup_pipelines_tests.broker import scratch_vhost, vhost_url
from backup_pipelines_tests.conftest import (
    commit_snapshot,
    make_local_store,
    metadata_of,
    run_job,
    runtime_from_env,
)
from backup_pipelines_tests.dagster_stack import LOCATION, DagsterUI, dev_stack
from backup_pipelines_tests.postgres_fixtures import (
    ADMIN_DSN,
    create_rich_database,
    database_state,
    scratch_databases,
    unique_name,
)
from backup_pipelines_tests.redis_fixtures import (
    assert_same_data,
    fill_crm_data,
    redis_process,
    server_state,
)
from backup_pipelines_tests.test_redis import port_of
from backup_pipelines_tests.test_retention import add_history
from backup_pipelines_tests.test_sensors import RequestsSensor

PG_PASSWORD = "pg-pw-from-the-environment"
CACHE_PASSWORD = "cache-pw-from-the-environment"
RESTIC_PASSWORD = "restic-pw-from-the-environment"
SECRETS = (PG_PASSWORD, CACHE_PASSWORD, RESTIC_PASSWORD)

TARGETS = """\
postgres:
  crm:
    backup_dsn: postgresql://postgres:${{PG_PASSWORD}}@127.0.0.1:5432/postgres
    databases: [{crm_db}]
  analytics:
    backup_dsn: postgresql://postgres:${{PG_PASSWORD}}@127.0.0.1:5432/postgres
    databases: {analytics_db}
    cron: "20 */2 * * *"
    retention: {{daily: 2, weekly: 0, monthly: 0, yearly: 0}}
redis:
  cache: {{host: 127.0.0.1, port: {cache_port}, password: "${{CACHE_PASSWORD}}"}}
  fsm: {{host: 127.0.0.1, port: {fsm_port}}}
documents:
  docs:
    root: {tree}
    restic_password: ${{RESTIC_PASSWORD}}
"""

TARGET_SOURCES = [
    "postgres.crm",
    "postgres.analytics",
    "redis.cache",
    "redis.fsm",
    "documents.docs",
]


def write_targets(path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    path.write_text(text)
    monkeypatch.setenv("BACKUP_TARGETS_FILE", str(path))
    return path


def build_small_tree(root: Path) -> None:
    for n in range(40):
        folder = root / f"client-{n % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"contract {n}.txt").write_bytes(os.urandom(200 + n))
    (root / "empty-dir").mkdir()


def tree_state(root: Path) -> dict[str, bytes | None]:
    return {
        str(path.relative_to(root)): path.read_bytes() if path.is_file() else None
        for path in sorted(root.rglob("*"))
    }


@pytest.fixture
def two_of_each(backup_env, monkeypatch, tmp_path):
    """The targets file, the two databases, the two servers and the tree it names; the
    environment's own BACKUP_POSTGRES_* and BACKUP_REDIS_* point nowhere (they must not leak
    into a target)."""
    crm_db, analytics_db = unique_name("bp_crm"), unique_name("bp_analytics")
    monkeypatch.setenv("PG_PASSWORD", PG_PASSWORD)
    monkeypatch.setenv("CACHE_PASSWORD", CACHE_PASSWORD)
    monkeypatch.setenv("RESTIC_PASSWORD", RESTIC_PASSWORD)
    monkeypatch.setenv("BACKUP_POSTGRES_BACKUP_DSN", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("BACKUP_REDIS_HOST", "192.0.2.1")
    tree = tmp_path / "docs"
    build_small_tree(tree)
    with (
        scratch_databases(crm_db, analytics_db),
        redis_process(tmp_path / "cache", CACHE_PASSWORD) as cache,
        redis_process(tmp_path / "fsm") as fsm,
    ):
        create_rich_database(crm_db)
        create_rich_database(analytics_db)
        fill_crm_data(cache)
        fsm.set("fsm:user:7", "awaiting_email")
        text = TARGETS.format(
            crm_db=crm_db,
            analytics_db=analytics_db,
            cache_port=port_of(cache),
            fsm_port=port_of(fsm),
            tree=tree,
        )
        file = write_targets(tmp_path / "targets.yaml", text, monkeypatch)
        yield {"file": file, "crm_db": crm_db, "analytics_db": analytics_db, "cache": cache,
               "fsm": fsm, "tree": tree}  # fmt: skip


def test_each_target_is_its_own_asset_job_schedule_pool_and_lineage(two_of_each):
    runtime = runtime_from_env()
    assert [name for name in runtime.sources if "." in name] == TARGET_SOURCES
    assert {"rabbitmq", "consul"} <= set(runtime.sources)  # kinds the file leaves out stay
    defs = build_definitions(runtime)
    schedules = {schedule.name: schedule for schedule in defs.schedules}
    pools = set()
    for name in TARGET_SOURCES:
        kind, target = name.split(".")
        backup = defs.resolve_assets_def(AssetKey([f"{kind}_backup", target]))
        [spec] = backup.specs
        assert {dep.asset_key for dep in spec.deps} == {AssetKey(["crm", kind, target])}
        assert spec.freshness_policy is not None and spec.group_name == "backups"
        pools.add(backup.op.pool)
        assert defs.resolve_job_def(f"{kind}_{target}_backup_job")
        assert schedules[f"{kind}_{target}_backup_schedule"].cron_schedule == (
            runtime.sources[name].cron
        )
    assert len(pools) == len(TARGET_SOURCES)  # one run per target; targets run side by side
    assert schedules["postgres_analytics_backup_schedule"].cron_schedule == "20 */2 * * *"
    assert schedules["postgres_crm_backup_schedule"].cron_schedule == "0 * * * *"
    assert AssetKey("postgres_backup") not in defs.resolve_all_asset_keys()
    kind_job = defs.resolve_job_def("postgres_backup_job")  # all postgres targets
    assert {key.path[1] for key in kind_job.asset_layer.selected_asset_keys} == {
        "crm",
        "analytics",
    }
    verification = build_verification(runtime)
    for name in TARGET_SOURCES:
        assert verification.resolve_assets_def(verification_asset_key(name))


@pytest.mark.slow
def test_each_target_backs_up_lists_verifies_and_restores_on_its_own(two_of_each, tmp_path, capsys):
    instance = DagsterInstance.ephemeral()
    for name in TARGET_SOURCES:
        kind, target = name.split(".")
        result = run_job(f"{kind}_{target}_backup_job", instance)
        assert result.success, name
        metadata = metadata_of(result, name)
        assert metadata["restore"].startswith(f"backup-pipelines restore {name} --snapshot ")
        assert not any(secret in json.dumps(metadata, default=str) for secret in SECRETS)

    artifacts = Path(os.environ["BACKUP_ARTIFACTS_DIR"])
    for name in TARGET_SOURCES:
        [location] = [p for p in (artifacts / name).iterdir() if p.name[0].isdigit()]
        manifest = json.loads((location / "manifest.json").read_text())
        assert (manifest["source"], manifest["kind"], manifest["target"]) == (
            name,
            *name.split("."),
        )
    crm = json.loads((artifacts / "postgres.crm").glob("2*/manifest.json").__next__().read_text())
    assert list(crm["stats"]["databases"]) == [two_of_each["crm_db"]]

    assert main(["snapshots", "postgres.analytics", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["source"] == "postgres.analytics"
    assert list(listed["stats"]["databases"]) == [two_of_each["analytics_db"]]

    assert main(["snapshots", "postgres", "--json"]) == 0  # a kind: all its targets
    assert {s["source"] for s in json.loads(capsys.readouterr().out)} == {
        "postgres.crm",
        "postgres.analytics",
    }
    assert main(["verify", "redis"]) == 0
    assert capsys.readouterr().out.count("verified") == 2
    for name in TARGET_SOURCES:
        assert main(["verify", name, "--deep"]) == 0, capsys.readouterr().err
        assert main(["drill", name]) == 0, capsys.readouterr().err
    capsys.readouterr()

    restored_db = unique_name("bp_restored")
    with scratch_databases(restored_db):
        target = ADMIN_DSN.rsplit("/", 1)[0] + f"/{restored_db}"
        command = ["restore", "postgres.crm", "--target-dsn", target]
        assert main([*command, "--database", two_of_each["crm_db"]]) == 0
        assert database_state(restored_db) == database_state(two_of_each["crm_db"])

    with redis_process(tmp_path / "restored-redis") as target:
        port = port_of(target)
        assert main(["restore", "redis.cache", "--target-url", f"redis://127.0.0.1:{port}"]) == 0
        assert_same_data(server_state(target), server_state(two_of_each["cache"]))

    assert main(["restore", "documents.docs", "--target-dir", str(tmp_path / "tree")]) == 0
    assert tree_state(tmp_path / "tree") == tree_state(two_of_each["tree"])
    out = capsys.readouterr()
    assert not any(secret in out.out + out.err for secret in SECRETS)


def test_requests_name_a_target_or_a_kind(two_of_each, requests_channel):
    for body in (b'{"source": "postgres.crm"}', b'{"source": "redis"}', b'{"source": "postgres"}'):
        requests_channel.basic_publish("", REQUESTS_QUEUE, body)
    requests = RequestsSensor().tick()
    assert [request.job_name for request in requests] == [
        "postgres_crm_backup_job",
        "redis_backup_job",
        "postgres_backup_job",
    ]


def test_a_target_that_cannot_be_reached_names_its_place_in_the_file(
    two_of_each, monkeypatch, tmp_path
):
    text = two_of_each["file"].read_text()
    port = port_of(two_of_each["fsm"])
    write_targets(two_of_each["file"], text.replace(f"port: {port}", "port: 1"), monkeypatch)
    result = run_job("redis_fsm_backup_job")  # as its schedule runs it: retried, then failed
    assert not result.success
    failure = [event for event in result.all_events if event.is_step_failure][-1]
    message = str(failure.step_failure_data.user_failure_data.description)
    file = two_of_each["file"]
    assert f"check redis.fsm.host in {file} and redis.fsm.port in {file}" in message
    assert "BACKUP_REDIS" not in message


def test_retention_counts_per_target(backup_env, monkeypatch, tmp_path, capsys):
    write_targets(
        tmp_path / "targets.yaml",
        "postgres:\n"
        "  crm: {backup_dsn: 'postgresql://postgres@127.0.0.1:5432/postgres'}\n"
        "  analytics:\n"
        "    backup_dsn: postgresql://postgres@127.0.0.1:5432/postgres\n"
        "    retention: {daily: 1, weekly: 0, monthly: 0, yearly: 0}\n",
        monkeypatch,
    )
    runtime = runtime_from_env()
    newest = datetime(2026, 11, 30, 12, tzinfo=UTC)
    for name in ("postgres.crm", "postgres.analytics"):
        add_history(runtime.store, runtime.staging.directory, name, 5, newest)
    assert main(["prune", "--dry-run", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)

    def count(verdict: str, name: str) -> int:
        return sum(listed.startswith(f"{name}/") for listed in listing[verdict])

    assert (count("keep", "postgres.crm"), count("delete", "postgres.crm")) == (5, 0)
    assert (count("keep", "postgres.analytics"), count("delete", "postgres.analytics")) == (1, 4)


def test_a_disabled_target_is_not_backed_up_but_stays_restorable(
    backup_env, monkeypatch, tmp_path, capsys
):
    write_targets(
        tmp_path / "targets.yaml",
        "redis:\n  old: {host: 127.0.0.1, port: 6379, enabled: false}\n"
        "  new: {host: 127.0.0.1, port: 6379}\n",
        monkeypatch,
    )
    runtime = runtime_from_env()
    with redis_process(tmp_path / "old") as old:
        old.set("fsm:user:1", "kept from before")
        port = port_of(old)
        rdb = tmp_path / "old.rdb"
        subprocess.run(["redis-cli", "-p", str(port), "--rdb", str(rdb)], check=True)
    commit_snapshot(
        runtime.store, runtime.staging.directory, {"dump.rdb": rdb.read_bytes()}, source="redis.old"
    )
    defs = build_definitions(runtime)
    keys = defs.resolve_all_asset_keys()
    assert AssetKey(["redis_backup", "new"]) in keys
    assert AssetKey(["redis_backup", "old"]) not in keys
    assert "redis_old_backup_schedule" not in {schedule.name for schedule in defs.schedules}
    assert main(["snapshots", "redis.old"]) == 0
    assert "redis.old" in capsys.readouterr().out
    assert main(["restore", "redis.old", "--output-dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "dump.rdb").read_bytes() == rdb.read_bytes()


MALFORMED = {
    "target named like a kind": (
        "postgres:\n  base: {backup_dsn: 'postgresql://postgres@127.0.0.1/postgres'}\n",
        "postgres.base: its names would be those of the kind postgres_base",
    ),
    "unknown kind": (
        "mysql:\n  crm: {dsn: x}\n",
        "'mysql' is not a kind (the kinds: postgres, postgres_base, redis, rabbitmq, consul, "
        "documents)",
    ),
    "missing field": ("redis:\n  cache: {port: 6379}\n", "redis.cache.host: is required"),
    "unknown field": (
        "consul:\n  dc1: {http_addr: 'http://127.0.0.1:8500', tokn: abc}\n",
        "consul.dc1: 'tokn' is not a setting of consul",
    ),
    "literal password in a DSN": (
        "postgres:\n  crm: {backup_dsn: 'postgresql://backup:hunter2@db:5432/postgres'}\n",
        "postgres.crm.backup_dsn: holds a literal password: write it as ${VARIABLE}",
    ),
    "literal password in a keyword DSN": (
        "postgres:\n  crm: {backup_dsn: 'host=db user=backup password=hunter2'}\n",
        "postgres.crm.backup_dsn: holds a literal password",
    ),
    "literal token": (
        "consul:\n  dc1: {http_addr: 'http://127.0.0.1:8500', token: hunter2}\n",
        "consul.dc1.token: holds a literal secret",
    ),
    "duplicate target": (
        "redis:\n  cache: {host: a, port: 1}\n  cache: {host: b, port: 2}\n",
        "redis: 'cache' is declared twice",
    ),
    "duplicate kind": (
        "redis:\n  a: {host: a, port: 1}\nredis:\n  b: {host: b, port: 2}\n",
        "the file: 'redis' is declared twice",
    ),
    "bad target name": (
        "redis:\n  Cache-1: {host: a, port: 1}\n",
        "redis: 'Cache-1' is not a target name",
    ),
    "unset variable": (
        "redis:\n  cache: {host: a, port: 1, password: '${NOT_SET_ANYWHERE}'}\n",
        "redis.cache.password: ${NOT_SET_ANYWHERE} is not set in the environment",
    ),
    "bad value": (
        "redis:\n  cache: {host: a, port: seventy}\n",
        "redis.cache.port: Input should be a valid integer",
    ),
    "bad cron": (
        "redis:\n  cache: {host: a, port: 1, cron: 'every hour'}\n",
        "redis.cache.cron:",
    ),
    "bad retention": (
        "redis:\n  cache: {host: a, port: 1, retention: {daily: -1, hourly: 3}}\n",
        "redis.cache.retention.daily: must be a whole number of snapshots or 'unlimited'",
    ),
    "not a mapping": ("redis: [a, b]\n", "redis: must be a mapping"),
    "not YAML": ("redis:\n  cache: {host: a\n", "not YAML"),
    "billion laughs": (
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n"
            for p, n in zip("abcdefgh", "bcdefghi", strict=True)
        )
        + "redis:\n  cache: {host: *i, port: 1}\n",
        "aliases (*name) are not allowed here",
    ),
    "nested too deep": ("redis: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested deeper than"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_targets_file_fails_the_load_naming_what_to_fix(
    backup_env, monkeypatch, tmp_path, case
):
    text, expected = MALFORMED[case]
    file = write_targets(tmp_path / "targets.yaml", text, monkeypatch)
    command = Path(sys.executable).with_name("backup-pipelines")
    result = subprocess.run([command, "snapshots"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid configuration: ") and "\n" not in (
        result.stderr.strip()
    )
    assert f"{file}: " in result.stderr and expected in result.stderr, result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(InvalidSettings):  # the code location does not load either
        build_definitions(load_runtime())


def test_every_problem_of_the_file_is_reported_at_once(backup_env, monkeypatch, tmp_path):
    text = "redis:\n  cache: {port: 1}\n  fsm: {host: a, port: 1, colour: blue}\nmysql: {}\n"
    write_targets(tmp_path / "targets.yaml", text, monkeypatch)
    with pytest.raises(InvalidSettings) as failure:
        load_runtime()
    assert len(failure.value.problems) == 3


def test_a_targets_file_that_cannot_be_read_says_which(backup_env, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("BACKUP_TARGETS_FILE", str(tmp_path / "missing.yaml"))
    assert main(["snapshots"]) == 2
    assert f"BACKUP_TARGETS_FILE names {tmp_path / 'missing.yaml'}, which cannot be read" in (
        capsys.readouterr().err
    )


def test_an_edit_of_the_file_is_seen_at_the_next_load(backup_env, monkeypatch, tmp_path):
    """The code location's `defs` re-reads the file: adding a target is an edit and a reload."""
    file = write_targets(
        tmp_path / "targets.yaml", "redis:\n  cache: {host: 127.0.0.1, port: 6379}\n", monkeypatch
    )
    assert (
        AssetKey(["redis_backup", "fsm"])
        not in build_definitions(load_runtime()).resolve_all_asset_keys()
    )
    file.write_text(file.read_text() + "  fsm: {host: 127.0.0.1, port: 6380}\n")
    assert (
        AssetKey(["redis_backup", "fsm"])
        in build_definitions(load_runtime()).resolve_all_asset_keys()
    )


ASSET_KEYS_QUERY = "query { assetNodes { assetKey { path } } }"
RELOAD_MUTATION = """
mutation Reload($location: String!) {
  reloadRepositoryLocation(repositoryLocationName: $location) {
    __typename
    ... on WorkspaceLocationEntry { locationOrLoadError { __typename } }
  }
}
"""


def asset_keys(ui: DagsterUI) -> set[tuple[str, ...]]:
    return {tuple(node["assetKey"]["path"]) for node in ui.graphql(ASSET_KEYS_QUERY)["assetNodes"]}


@pytest.mark.e2e
def test_a_target_added_to_the_file_appears_on_reload_and_backs_up(tmp_path):
    """`make dev`'s UI: add a target to the file, press Reload, materialize the new asset."""
    artifacts = tmp_path / "artifacts"
    with scratch_vhost() as vhost, redis_process(tmp_path / "cache") as cache:
        cache.set("cache:1", "warm")
        file = tmp_path / "targets.yaml"
        file.write_text("redis:\n  fsm: {host: 127.0.0.1, port: 6379}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "DAGSTER_"))}
        env |= {
            "BACKUP_ARTIFACTS_DIR": str(artifacts),
            "BACKUP_TARGETS_FILE": str(file),
            "BACKUP_RABBITMQ_URL": vhost_url(vhost),
        }
        with dev_stack(tmp_path / "dev", env) as ui:
            keys = asset_keys(ui)
            assert ("redis_backup", "fsm") in keys and ("redis_backup", "cache") not in keys
            file.write_text(
                file.read_text() + f"  cache: {{host: 127.0.0.1, port: {port_of(cache)}}}\n"
            )
            reloaded = ui.graphql(RELOAD_MUTATION, location=LOCATION)["reloadRepositoryLocation"]
            assert reloaded["locationOrLoadError"]["__typename"] == "RepositoryLocation", reloaded
            keys = asset_keys(ui)
            assert ("redis_backup", "cache") in keys and ("crm", "redis", "cache") in keys
            run = ui.materialize(["redis_backup", "cache"])
            assert ui.wait_for_run(timeout_s=120, runIds=[run])["status"] == "SUCCESS"
    [snapshot] = make_local_store(artifacts).list_snapshots("redis.cache")
    assert (snapshot.manifest.kind, snapshot.manifest.target) == ("redis", "cache")


def test_snapshots_from_before_a_kind_moved_into_the_targets_file_stay_listed_and_restorable(
    backup_env, monkeypatch, tmp_path, capsys
):
    with redis_process(tmp_path / "before") as before:
        before.set("fsm:user:1", "backed up before the targets file")
        rdb = tmp_path / "before.rdb"
        subprocess.run(["redis-cli", "-p", str(port_of(before)), "--rdb", str(rdb)], check=True)
    runtime = runtime_from_env()  # no targets file yet: the kind under its own name
    add_history(runtime.store, runtime.staging.directory, "redis", 5, datetime.now(UTC))
    old = commit_snapshot(
        runtime.store, runtime.staging.directory, {"dump.rdb": rdb.read_bytes()}, source="redis"
    )
    write_targets(
        tmp_path / "targets.yaml", "redis:\n  cache: {host: 127.0.0.1, port: 6379}\n", monkeypatch
    )
    for rule, count in (("LAST", "2"), ("DAILY", "0"), ("WEEKLY", "0"), ("MONTHLY", "0")):
        monkeypatch.setenv(f"BACKUP_RETENTION_{rule}", count)
    monkeypatch.setenv("BACKUP_RETENTION_YEARLY", "0")

    assert main(["snapshots", "redis", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert old.snapshot_id in {s["snapshot_id"] for s in listed if s["source"] == "redis"}
    assert main(["restore", "redis", "--output-dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "dump.rdb").read_bytes() == rdb.read_bytes()
    capsys.readouterr()
    assert main(["prune", "--dry-run", "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert f"redis/{old.snapshot_id}" in pruned["keep"]
    assert any(listed.startswith("redis/") for listed in pruned["delete"])
    keys = build_definitions(runtime_from_env()).resolve_all_asset_keys()
    assert AssetKey(["redis_backup", "cache"]) in keys and AssetKey("redis_backup") not in keys
