"""The production Dagster processes on loopback ports: the backups' code server, the
verifier's, the webserver and the daemon.

They run from `deploy/dagster.yaml` and `deploy/workspace.yaml` unchanged, as the
compose services do: the instance's storage is a scratch database on the
machine's PostgreSQL (dagster-postgres), runs go through the QueuedRunCoordinator
and the daemon, and the webserver and daemon reach the code over gRPC.
"""

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from psycopg import sql

from backup_pipelines_tests.broker import scratch_vhost, vhost_url
from backup_pipelines_tests.conftest import (
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    free_port,
    s3_client,
    wait_for_http,
)
from backup_pipelines_tests.postgres_fixtures import (
    connect,
    create_rich_database,
    scratch_databases,
    unique_name,
)

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
LOCATION = "backup_pipelines"
VERIFICATION = "verification"
REPOSITORY = "__repository__"  # the name Dagster gives the repository of a Definitions object
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

LAUNCH_MUTATION = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
ASSET_CHECKS_QUERY = """
query AssetChecks($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { assetChecksOrError { ... on AssetChecks { checks { name } } } }
  }
}
"""
DAEMONS_QUERY = """
{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }
"""
RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    ... on Runs { results { runId status jobName startTime endTime tags { key value } } }
    ... on PythonError { message }
  }
}
"""


@dataclass
class DagsterUI:
    """A running webserver, daemon and code server, spoken to as the UI does: GraphQL."""

    url: str
    logs: Path

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def materialize(self, asset: str | list[str], location: str = LOCATION) -> str:
        """What the UI's Materialize button sends: the asset (a name, or its key's path) and
        its checks. Returns the run id."""
        path = [asset] if isinstance(asset, str) else asset
        node = self.graphql(ASSET_CHECKS_QUERY, path=path)["assetNodeOrError"]
        checks = [
            {"assetKey": {"path": path}, "name": check["name"]}
            for check in node["assetChecksOrError"]["checks"]
        ]
        params = {
            "mode": "default",
            "runConfigData": {},
            "executionMetadata": {"tags": []},
            "selector": {
                "repositoryLocationName": location,
                "repositoryName": REPOSITORY,
                "pipelineName": "__ASSET_JOB",
                "assetSelection": [{"path": path}],
                "assetCheckSelection": checks,
            },
        }
        result = self.graphql(LAUNCH_MUTATION, executionParams=params)["launchPipelineExecution"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def unhealthy_daemons(self) -> list[str]:
        """The required daemons (scheduler, sensors, run queue, ...) without a recent heartbeat."""
        statuses = self.graphql(DAEMONS_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
        return [s["daemonType"] for s in statuses if s["required"] and not s["healthy"]]

    def runs(self, **run_filter: Any) -> list[dict[str, Any]]:
        """Run history, newest first, as the Runs page reads it."""
        result = self.graphql(RUNS_QUERY, filter=run_filter)["runsOrError"]
        assert "results" in result, result
        return result["results"]

    def wait_for_run(self, timeout_s: float = 120, **run_filter: Any) -> dict[str, Any]:
        """The first run matching the filter, once it finished."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            runs = self.runs(**run_filter)
            if runs and runs[0]["status"] in FINISHED:
                return runs[0]
            time.sleep(1)
        raise AssertionError(
            f"no finished run for {run_filter} within {timeout_s} s: "
            f"{self.runs(**run_filter)}\n{self.log_tails()}"
        )

    def log_tails(self, lines: int = 30) -> str:
        """The end of each process's output, for a failure message."""
        tails = []
        for log in sorted(self.logs.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(tails)


@dataclass
class DagsterStack(DagsterUI):
    """The UI of a stack that backs up a scratch CRM database."""

    cli_env: dict[str, str]  # for `backup-pipelines` commands
    crm_database: str  # the database the stack backs up
    rabbitmq_url: str  # the vhost of its events and backup.requests


def start_logged(
    name: str, command: list[str], env: Mapping[str, str], logs: Path
) -> subprocess.Popen:
    with (logs / f"{name}.log").open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            command, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(check, what: str, timeout_s: float, ui: DagsterUI) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready within {timeout_s} s\n{ui.log_tails()}")


def grpc_healthy(bin_dir: Path, port: int, env: Mapping[str, str], host: str = "127.0.0.1") -> bool:
    command = [
        str(bin_dir / "dagster"),
        "api",
        "grpc-health-check",
        "-p",
        str(port),
        "--host",
        host,
    ]
    return subprocess.run(command, env=dict(env), capture_output=True).returncode == 0


def compute_logs_env(s3_endpoint: str) -> dict[str, str]:
    """What `deploy/dagster.yaml`'s S3ComputeLogManager reads: a bucket of its own on moto's
    server, and boto3's keys."""
    bucket = unique_name("dagster-logs").replace("_", "-")
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    return {
        "DAGSTER_COMPUTE_LOGS_BUCKET": bucket,
        "DAGSTER_COMPUTE_LOGS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@contextmanager
def running_stack(workdir: Path, s3_endpoint: str) -> Iterator[DagsterStack]:
    """The stack backing up a scratch CRM database, with events on a scratch vhost and
    compute logs on moto's S3 (`s3_endpoint`)."""
    crm_database, instance_database = unique_name("bp_e2e_crm"), unique_name("dagster_e2e")
    with scratch_vhost() as vhost, scratch_databases(crm_database, instance_database):
        create_rich_database(crm_database)
        with connect("postgres") as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(instance_database)))
        backup_env = {
            "BACKUP_ARTIFACTS_DIR": str(workdir / "artifacts"),
            "BACKUP_POSTGRES_BACKUP_DSN": "postgresql://postgres@127.0.0.1:5432/postgres",
            "BACKUP_POSTGRES_DATABASES": crm_database,
            "BACKUP_RABBITMQ_URL": vhost_url(vhost),
            "BACKUP_RETRY_DELAY_S": "0",
        }
        base_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "DAGSTER_", "AWS_"))
        } | compute_logs_env(s3_endpoint)
        instance_url = f"postgresql://postgres@127.0.0.1:5432/{instance_database}"
        with _processes(workdir, {**base_env, **backup_env}, instance_url) as (url, logs):
            yield DagsterStack(
                url=url,
                logs=logs,
                cli_env={**base_env, **backup_env},
                crm_database=crm_database,
                rabbitmq_url=backup_env["BACKUP_RABBITMQ_URL"],
            )


@contextmanager
def _processes(workdir: Path, env: Mapping[str, str], instance_url: str) -> Iterator[tuple]:
    """Code server, webserver and daemon as docker-compose.yml runs them; yields (url, logs)."""
    bin_dir = Path(sys.executable).parent
    home, logs = workdir / "dagster_home", workdir / "logs"
    home.mkdir(parents=True)
    logs.mkdir()
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copy(DEPLOY / name, home / name)
    code_port, verifier_port, web_port = free_port(), free_port(), free_port()
    env = {
        **env,
        "DAGSTER_HOME": str(home),
        "BACKUP_DATABASE_URL": instance_url,
        "DAGSTER_CODE_SERVER_HOST": "127.0.0.1",
        "DAGSTER_CODE_SERVER_PORT": str(code_port),
        "DAGSTER_VERIFIER_HOST": "127.0.0.1",
        "DAGSTER_VERIFIER_PORT": str(verifier_port),
    }
    url = f"http://127.0.0.1:{web_port}"
    ui = DagsterUI(url=url, logs=logs)
    workspace = str(home / "workspace.yaml")
    commands = {
        "code-server": [str(bin_dir / "dagster"), "code-server", "start", "-h", "127.0.0.1",
                        "-p", str(code_port), "-m", "backup_pipelines.definitions",
                        "--location-name", LOCATION],
        "verifier": [str(bin_dir / "dagster"), "code-server", "start", "-h", "127.0.0.1",
                     "-p", str(verifier_port), "-m", "backup_pipelines.verification",
                     "--location-name", VERIFICATION],
        "webserver": [str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1",
                      "-p", str(web_port), "-w", workspace],
        "daemon": [str(bin_dir / "dagster-daemon"), "run", "-w", workspace],
    }  # fmt: skip
    # As the code server's start in docker-compose.yml: the schema first, once.
    subprocess.run(
        [str(bin_dir / "dagster"), "instance", "migrate"], env=env, check=True, capture_output=True
    )
    with ExitStack() as cleanup:  # stops the processes in reverse order of start
        code_servers = {"code-server": code_port, "verifier": verifier_port}
        for name in code_servers:
            cleanup.callback(stop_process, start_logged(name, commands[name], env, logs))
        for name, port in code_servers.items():
            wait_until(lambda port=port: grpc_healthy(bin_dir, port, env), name, 90, ui)
        for name in ("webserver", "daemon"):
            cleanup.callback(stop_process, start_logged(name, commands[name], env, logs))
        wait_for_http(f"{url}/server_info", timeout_s=90)
        wait_until(lambda: not ui.unhealthy_daemons(), "the daemons", 90, ui)
        yield url, logs


@contextmanager
def dev_stack(workdir: Path, env: Mapping[str, str]) -> Iterator[DagsterUI]:
    """What `make dev` runs: `dagster dev` with the root dagster.yaml (SQLite under a
    DAGSTER_HOME of its own) and workspace.yaml, on a loopback port."""
    home, logs = workdir / "dagster_home", workdir / "logs"
    home.mkdir(parents=True)
    logs.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    command = [str(Path(sys.executable).parent / "dagster"), "dev", "-w",
               str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    ui = DagsterUI(url=f"http://127.0.0.1:{port}", logs=logs)
    process = start_logged("dagster-dev", command, {**env, "DAGSTER_HOME": str(home)}, logs)
    try:
        wait_for_http(f"{ui.url}/server_info", timeout_s=120)
        wait_until(lambda: not ui.unhealthy_daemons(), "the daemons", 120, ui)
        yield ui
    finally:
        stop_process(process)
