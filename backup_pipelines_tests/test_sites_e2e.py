"""Two sites, one Dagster instance, end to end: each site's code server in a network namespace
of its own, able to reach only its own Redis, and the webserver and daemon here
(`site_stack.py`). A run of each site's target executes on its site's host, its compute logs
come to the UI from S3, and a site whose code server is down fails only its own runs."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from psycopg import sql

from backup_pipelines_tests.broker import scratch_vhost, vhost_url
from backup_pipelines_tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, s3_client
from backup_pipelines_tests.dagster_stack import LAUNCH_MUTATION, REPOSITORY, compute_logs_env
from backup_pipelines_tests.postgres_fixtures import connect, scratch_databases, unique_name
from backup_pipelines_tests.site_stack import Sites, running_sites, site_namespace, site_redis
from backup_pipelines_tests.test_end_to_end import compute_logs_read_from_s3

pytestmark = pytest.mark.e2e

KEYS = {"east": 3, "west": 5}
METADATA_QUERY = """
query Materializations($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        metadataEntries {
          label
          ... on TextMetadataEntry { text }
          ... on JsonMetadataEntry { jsonString }
        }
      }
    }
  }
}
"""
TARGETS = """\
redis:
  east_cache: {host: 127.0.0.1, port: 6379, site: east}
  west_cache: {host: 127.0.0.1, port: 6379, site: west}
"""


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[Sites]:
    """Both sites (the same 127.0.0.1:6379 in each, each its own server) and the instance."""
    if shutil.which("ip") is None or subprocess.run(["ip", "netns", "list"]).returncode:
        pytest.fail("`ip netns` is needed (iproute2, as root): make test-tools installs it")
    workdir = tmp_path_factory.mktemp("sites")
    instance_db, bucket = unique_name("dagster_sites"), unique_name("sites-store").replace("_", "-")
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    (workdir / "targets.yaml").write_text(TARGETS)
    with ExitStack() as stack:
        vhost = stack.enter_context(scratch_vhost("bp_sites"))
        stack.enter_context(scratch_databases(instance_db))
        with connect("postgres") as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(instance_db)))
        subnet = random.randrange(0, 254)  # of 10.231.x.0/30: none a left-over run holds
        east = stack.enter_context(site_namespace("east", subnet))
        west = stack.enter_context(site_namespace("west", subnet + 1))
        for site in (east, west):
            stack.enter_context(site_redis(site, workdir, KEYS[site.name]))
        moto_port = int(s3_endpoint.rsplit(":", 1)[1])
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "BACKUP_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{instance_db}",
            "BACKUP_TARGETS_FILE": str(workdir / "targets.yaml"),
            "BACKUP_S3_ENDPOINT_URL": s3_endpoint,
            "BACKUP_S3_BUCKET": bucket,
            "BACKUP_S3_ACCESS_KEY": S3_ACCESS_KEY,
            "BACKUP_S3_SECRET_KEY": S3_SECRET_KEY,
            "BACKUP_RABBITMQ_URL": vhost_url(vhost),
            "BACKUP_RETRY_DELAY_S": "0",
            **compute_logs_env(s3_endpoint),
        }
        reached = {
            "BACKUP_DATABASE_URL": 5432,
            "BACKUP_S3_ENDPOINT_URL": moto_port,
            "DAGSTER_COMPUTE_LOGS_ENDPOINT_URL": moto_port,
            "BACKUP_RABBITMQ_URL": 5672,
        }
        yield stack.enter_context(running_sites(workdir, [east, west], env, reached))


def materialized(sites: Sites, site: str) -> tuple[dict, dict[str, str]]:
    """A backup of the site's target, launched as the UI does; its run and its metadata."""
    path = ["redis_backup", f"{site}_cache"]
    run_id = sites.ui.materialize(path, location=sites.sites[site].location)
    run = sites.ui.wait_for_run(runIds=[run_id], timeout_s=180)
    materializations = sites.ui.graphql(METADATA_QUERY, path=path)
    latest = materializations["assetOrError"]["assetMaterializations"][0]
    metadata = {
        entry["label"]: entry.get("text", entry.get("jsonString"))
        for entry in latest["metadataEntries"]
    }
    return run, metadata if latest["runId"] == run_id else {}


def test_each_sites_run_executes_on_its_site_and_its_logs_reach_the_ui(sites):
    for site, keys in KEYS.items():
        run, metadata = materialized(sites, site)
        assert run["status"] == "SUCCESS", sites.ui.log_tails()
        assert metadata["ran_on"] == sites.sites[site].hostname  # the run's own word
        assert metadata["site"] == site
        assert json.loads(metadata["keys"]) == {"db0": keys}  # its own Redis, not the other's
        logs = compute_logs_read_from_s3(sites.ui, sites.env, run["runId"])
        assert "redis_backup" in logs


def test_a_site_whose_code_server_is_down_fails_only_its_own_runs(sites):
    sites.stop_code_server("west")
    path = ["redis_backup", "west_cache"]
    params = {
        "mode": "default",
        "runConfigData": {},
        "executionMetadata": {"tags": []},
        "selector": {
            "repositoryLocationName": sites.sites["west"].location,
            "repositoryName": REPOSITORY,
            "pipelineName": "__ASSET_JOB",
            "assetSelection": [{"path": path}],
        },
    }
    sites.ui.graphql(RELOAD_MUTATION, location=sites.sites["west"].location)
    launched = sites.ui.graphql(LAUNCH_MUTATION, executionParams=params)
    said = str(launched["launchPipelineExecution"])
    assert launched["launchPipelineExecution"]["__typename"] != "LaunchRunSuccess", said
    assert "backup_pipelines_west" in said or "UNAVAILABLE" in said, said
    run, _ = materialized(sites, "east")
    assert run["status"] == "SUCCESS", sites.ui.log_tails()


RELOAD_MUTATION = """
mutation Reload($location: String!) {
  reloadRepositoryLocation(repositoryLocationName: $location) { __typename }
}
"""
