"""docker-compose.yml, .env.example and the Dockerfile, checked without a Docker engine.

Debian's `docker-compose config` validates the file against the Compose schema
and resolves `.env.example` into it offline; `deployment_problems` then checks
what the schema cannot know: every service the stack needs, a health check on
each, volumes for the stateful ones, and only `BACKUP_*` variables that the
settings actually read.
"""

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from backup_pipelines.recovery_targets import read_into_file
from backup_pipelines.runtime import load_runtime, load_settings
from backup_pipelines.settings import BackupSettings, env_names
from backup_pipelines.sources.registry import SOURCES

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"

DAGSTER_SERVICES = ("code-server", "verifier", "webserver", "daemon")
BACKUP_SERVICES = (*DAGSTER_SERVICES, "pruner", "exporter")
STATEFUL = {  # service → the directory its data lives in
    "postgres": "/var/lib/postgresql/data",
    "dagster-postgres": "/var/lib/postgresql/data",
    "redis": "/data",
    "rabbitmq": "/var/lib/rabbitmq",
    "consul": "/consul/data",
    "minio": "/data",
    "minio-offsite": "/data",
}
ONE_SHOT = ("minio-bucket", "minio-offsite-bucket", "recover")  # each runs once: no health
REQUIRED_SERVICES = (*STATEFUL, *ONE_SHOT, *BACKUP_SERVICES, "ui-proxy")
INSTANCE_ENV = {
    "BACKUP_DATABASE_URL",
    "DAGSTER_COMPUTE_LOGS_BUCKET",
    "DAGSTER_COMPUTE_LOGS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "DAGSTER_CODE_SERVER_HOST",
    "DAGSTER_CODE_SERVER_PORT",
    "DAGSTER_VERIFIER_HOST",
    "DAGSTER_VERIFIER_PORT",
}
READS_AND_DECRYPTS = {  # the verifier's and recover's: every store, and every snapshot opened
    "BACKUP_STORES_FILE",
    "BACKUP_S3_ENDPOINT_URL",
    "BACKUP_S3_BUCKET",
    "BACKUP_S3_ACCESS_KEY",
    "BACKUP_S3_SECRET_KEY",
    "BACKUP_AGE_IDENTITY_FILE",
    "BACKUP_RESTIC_PASSWORD",
}
REQUIRED_ENV = {
    "code-server": INSTANCE_ENV
    | {
        "BACKUP_STORES_FILE",
        "BACKUP_S3_ENDPOINT_URL",
        "BACKUP_S3_BUCKET",
        "BACKUP_S3_ACCESS_KEY",
        "BACKUP_S3_SECRET_KEY",
        "BACKUP_POSTGRES_BACKUP_DSN",
        "BACKUP_REDIS_HOST",
        "BACKUP_REDIS_PASSWORD",
        "BACKUP_RABBITMQ_URL",
        "BACKUP_RABBITMQ_MANAGEMENT_URL",
        "BACKUP_RABBITMQ_ADMIN_USER",
        "BACKUP_RABBITMQ_ADMIN_PASSWORD",
        "BACKUP_CONSUL_HTTP_ADDR",
        "BACKUP_DOCUMENTS_ROOT",
        "BACKUP_RESTIC_PASSWORD",
    },
    "verifier": INSTANCE_ENV | READS_AND_DECRYPTS | {"BACKUP_RABBITMQ_URL"},
    "pruner": {
        "BACKUP_STORES_FILE",
        "BACKUP_S3_ENDPOINT_URL",
        "BACKUP_S3_BUCKET",
        "BACKUP_S3_ACCESS_KEY",
        "BACKUP_S3_SECRET_KEY",
        "BACKUP_S3_PRUNE_ACCESS_KEY",
        "BACKUP_S3_PRUNE_SECRET_KEY",
        "BACKUP_RESTIC_PASSWORD",
    },
    "exporter": {
        "BACKUP_STORES_FILE",
        "BACKUP_S3_ENDPOINT_URL",
        "BACKUP_S3_BUCKET",
        "BACKUP_S3_ACCESS_KEY",
        "BACKUP_S3_SECRET_KEY",
    },
    "recover": READS_AND_DECRYPTS,
    "webserver": INSTANCE_ENV,
    "daemon": INSTANCE_ENV,
}
PRUNE_KEYS = {"BACKUP_S3_PRUNE_ACCESS_KEY", "BACKUP_S3_PRUNE_SECRET_KEY"}
KEPT_FROM = {  # service → variables it must not be given: the keys of another role
    "code-server": {"BACKUP_AGE_IDENTITY_FILE", *PRUNE_KEYS},
    "verifier": PRUNE_KEYS,
    "recover": PRUNE_KEYS,
    "exporter": {"BACKUP_AGE_IDENTITY_FILE", *PRUNE_KEYS},
}
SECRETS = (
    "UI_USER",
    "UI_PASSWORD_HASH",
    "CRM_POSTGRES_PASSWORD",
    "DAGSTER_POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "RABBITMQ_PASSWORD",
    "BACKUP_S3_ACCESS_KEY",
    "BACKUP_S3_SECRET_KEY",
    "BACKUP_RESTIC_PASSWORD",
    "VERIFIER_S3_ACCESS_KEY",
    "VERIFIER_S3_SECRET_KEY",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "PRUNER_S3_ACCESS_KEY",
    "PRUNER_S3_SECRET_KEY",
    "OFFSITE_MINIO_ROOT_USER",
    "OFFSITE_MINIO_ROOT_PASSWORD",
    "OFFSITE_WRITER_ACCESS_KEY",
    "OFFSITE_WRITER_SECRET_KEY",
    "OFFSITE_PRUNER_ACCESS_KEY",
    "OFFSITE_PRUNER_SECRET_KEY",
    "OFFSITE_VERIFIER_ACCESS_KEY",
    "OFFSITE_VERIFIER_SECRET_KEY",
    "DAGSTER_LOGS_ACCESS_KEY",
    "DAGSTER_LOGS_SECRET_KEY",
)


def settings_variables() -> set[str]:
    """Every environment variable the settings read (shared and each source's), aliases too."""
    names = env_names(BackupSettings)
    for source in SOURCES:
        names |= env_names(source.settings_model)
    return names


def compose_config(compose_file: Path, env_file: Path) -> dict[str, Any]:
    """The file as Compose resolves it; AssertionError with Compose's own words if invalid."""
    result = subprocess.run(
        ["docker-compose", "--project-directory", str(REPO), "-f", str(compose_file),
         "--env-file", str(env_file), "config"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, f"docker-compose config: {result.stderr.strip()}"
    return yaml.safe_load(result.stdout)


def volume_target(volume: str | dict[str, Any]) -> str:
    """The container path of a volume, in short (`name:/path[:mode]`) or long syntax."""
    return volume["target"] if isinstance(volume, dict) else volume.split(":")[1]


def deployment_problems(config: dict[str, Any]) -> list[str]:
    """What keeps the resolved file from being the stack the README promises."""
    services = config["services"]
    problems = [f"service {name} is missing" for name in REQUIRED_SERVICES if name not in services]
    known = settings_variables()
    for name, service in services.items():
        environment = service.get("environment") or {}
        if name not in ONE_SHOT and not service.get("healthcheck", {}).get("test"):
            problems.append(f"service {name} has no health check")
        for variable in sorted(REQUIRED_ENV.get(name, set()) - environment.keys()):
            problems.append(f"service {name} does not set {variable}")
        for variable in sorted(KEPT_FROM.get(name, set()) & environment.keys()):
            problems.append(f"service {name} sets {variable}, which belongs elsewhere")
        for variable in sorted(v for v in environment if v.startswith("BACKUP_")):
            if variable not in known:
                problems.append(f"service {name} sets {variable}, which the settings do not read")
        if name in STATEFUL:
            targets = {volume_target(volume) for volume in service.get("volumes", [])}
            if STATEFUL[name] not in targets:
                problems.append(f"service {name} keeps {STATEFUL[name]} on no volume")
    for variable, store in (("BACKUP_S3_ACCESS_KEY", ""), ("OFFSITE_S3_ACCESS_KEY", " off-site")):
        keys = {
            name: services.get(name, {}).get("environment", {}).get(variable)
            for name in ("code-server", "verifier", "pruner")
        }
        if keys["verifier"] == keys["code-server"]:
            problems.append(
                f"service verifier has the backup host's{store} S3 keys, not read-only ones"
            )
        if keys["pruner"] == keys["code-server"]:
            problems.append(
                f"service pruner has the backup host's{store} S3 keys, not the pruner's"
            )
    if services.get("webserver", {}).get("ports"):
        problems.append("the webserver publishes a port: the UI must be reached through ui-proxy")
    webserver_check = services.get("webserver", {}).get("healthcheck", {}).get("test", [])
    if "/server_info" not in " ".join(webserver_check):
        problems.append("the webserver's health check does not ask /server_info")
    return problems


def mutated(tmp_path: Path, change) -> Path:
    """A copy of docker-compose.yml with `change` applied to its parsed YAML."""
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    change(document)
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(autouse=True)
def _docker_compose_installed():
    assert shutil.which("docker-compose"), "docker-compose is missing: run `make install`"


def test_the_compose_stack_is_complete():
    config = compose_config(COMPOSE_FILE, ENV_EXAMPLE)

    assert deployment_problems(config) == []


@pytest.mark.parametrize("service", ["code-server", "verifier", "pruner", "exporter"])
def test_the_code_servers_environment_is_a_valid_configuration(monkeypatch, service):
    environment = compose_config(COMPOSE_FILE, ENV_EXAMPLE)["services"][service]
    for name, value in environment["environment"].items():
        monkeypatch.setenv(name, value)
    mounted = {volume_target(volume): volume for volume in environment["volumes"]}
    assert os.environ["BACKUP_STORES_FILE"] in mounted  # the file the service is given
    monkeypatch.setenv("BACKUP_STORES_FILE", str(REPO / "deploy" / "stores.yaml"))

    settings = load_settings()

    [_, offsite] = settings.stores
    offsite_prunes = offsite.location.prune_access_key is not None
    assert offsite.name == "offsite" and offsite_prunes == (service == "pruner")
    assert settings.shared.s3_enabled
    if service == "exporter":
        return
    assert settings.sources["documents"].restic_password is not None
    if service == "code-server":
        assert settings.sources["documents"].root == Path("/documents")
        assert settings.shared.age_identity_file is None
        assert settings.shared.s3_object_lock_days and settings.shared.prunes_elsewhere
    elif service == "verifier":
        assert settings.shared.age_identity_file == Path("/run/secrets/age-identity")
    else:  # the pruner deletes with keys of its own
        assert settings.shared.prunes_elsewhere is None
        assert settings.shared.s3_prune_access_key is not None


def test_keys_given_to_the_wrong_role_are_caught(tmp_path):
    def misplace(document):
        services = document["services"]
        services["code-server"]["environment"]["BACKUP_AGE_IDENTITY_FILE"] = "/identity"
        services["verifier"]["environment"]["BACKUP_S3_ACCESS_KEY"] = "${BACKUP_S3_ACCESS_KEY}"

    config = compose_config(mutated(tmp_path, misplace), ENV_EXAMPLE)

    assert deployment_problems(config) == [
        "service code-server sets BACKUP_AGE_IDENTITY_FILE, which belongs elsewhere",
        "service verifier has the backup host's S3 keys, not read-only ones",
    ]


@pytest.mark.parametrize("service", REQUIRED_SERVICES)
def test_a_removed_service_is_caught(tmp_path, service):
    def remove(document):
        del document["services"][service]
        for other in document["services"].values():
            if isinstance(other.get("depends_on"), dict):
                other["depends_on"].pop(service, None)

    config = compose_config(mutated(tmp_path, remove), ENV_EXAMPLE)

    assert f"service {service} is missing" in deployment_problems(config)


@pytest.mark.parametrize(
    ("service", "variable"),
    [("code-server", "BACKUP_POSTGRES_BACKUP_DSN"), ("code-server", "BACKUP_S3_BUCKET")],
)
def test_a_removed_required_variable_is_caught(tmp_path, service, variable):
    config = compose_config(
        mutated(tmp_path, lambda d: d["services"][service]["environment"].pop(variable)),
        ENV_EXAMPLE,
    )

    assert f"service {service} does not set {variable}" in deployment_problems(config)


def test_a_variable_the_settings_do_not_read_is_caught(tmp_path):
    def misspell(document):
        document["services"]["code-server"]["environment"]["BACKUP_S3_BUKET"] = "backups"

    config = compose_config(mutated(tmp_path, misspell), ENV_EXAMPLE)

    assert deployment_problems(config) == [
        "service code-server sets BACKUP_S3_BUKET, which the settings do not read"
    ]


def test_a_webserver_published_around_the_authenticating_proxy_is_caught(tmp_path):
    def publish(document):
        document["services"]["webserver"]["ports"] = ["127.0.0.1:3001:3000"]

    config = compose_config(mutated(tmp_path, publish), ENV_EXAMPLE)

    assert deployment_problems(config) == [
        "the webserver publishes a port: the UI must be reached through ui-proxy"
    ]


def test_a_service_without_a_health_check_is_caught(tmp_path):
    config = compose_config(
        mutated(tmp_path, lambda d: d["services"]["daemon"].pop("healthcheck")), ENV_EXAMPLE
    )

    assert deployment_problems(config) == ["service daemon has no health check"]


@pytest.mark.parametrize("secret", SECRETS)
def test_compose_refuses_to_start_without_a_required_secret(tmp_path, secret):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "".join(
            line + "\n"
            for line in ENV_EXAMPLE.read_text().splitlines()
            if not line.startswith(f"{secret}=")
        )
    )

    with pytest.raises(AssertionError, match=f"set {secret} in .env"):
        compose_config(COMPOSE_FILE, env_file)


def test_the_dockerfile_copies_only_what_exists():
    copied = [
        source
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    ]

    assert copied, "the Dockerfile copies nothing"
    assert [source for source in copied if not (REPO / source).exists()] == []


def test_the_recover_service_reads_its_into_file_with_the_stacks_passwords(monkeypatch):
    service = compose_config(COMPOSE_FILE, ENV_EXAMPLE)["services"]["recover"]
    for name, value in service["environment"].items():
        monkeypatch.setenv(name, value)
    mounted = {volume_target(volume): volume for volume in service["volumes"]}
    into = "/etc/backup-pipelines/recover-into.yaml"
    assert into in service["entrypoint"] and into in mounted and "/documents" in mounted
    assert service["profiles"] == ["recover"]  # never started by `up`
    monkeypatch.setenv("BACKUP_STORES_FILE", str(REPO / "deploy" / "stores.yaml"))

    targets = read_into_file(
        REPO / "deploy" / "recover-into.yaml", load_runtime().sources, os.environ
    )

    assert list(targets.options) == ["postgres", "redis", "rabbitmq", "consul", "documents"]
    assert os.environ["REDIS_PASSWORD"] in targets.secrets  # masked wherever it could appear


SITES = REPO / "deploy" / "sites"


def test_a_site_host_runs_its_named_location_against_the_central_instance(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "BACKUP_SITE=east\nCENTRAL_HOST=10.0.0.1\n")
    [service] = compose_config(SITES / "docker-compose.site.yml", env_file)["services"].values()

    environment = service["environment"]
    assert environment["BACKUP_SITE"] == "east" and service["healthcheck"]["test"]
    workspace_hosts = {
        name for name in INSTANCE_ENV if name.startswith(("DAGSTER_CODE", "DAGSTER_VER"))
    }
    assert INSTANCE_ENV - workspace_hosts <= environment.keys()  # the instance, not a workspace
    command = " ".join(service["command"]).replace("$$", "$")  # compose's escape, for sh
    assert "--location-name backup_pipelines_${BACKUP_SITE}" in command
    known = settings_variables()
    assert [v for v in environment if v.startswith("BACKUP_") and v not in known] == []
    without_site = tmp_path / ".env-without-site"
    without_site.write_text(ENV_EXAMPLE.read_text() + "CENTRAL_HOST=10.0.0.1\n")
    with pytest.raises(AssertionError, match="set BACKUP_SITE"):
        compose_config(SITES / "docker-compose.site.yml", without_site)


def test_every_site_location_is_named_after_its_site_in_the_workspace_and_the_helm_values():
    workspace = yaml.safe_load((SITES / "workspace.yaml").read_text())
    names = [entry["grpc_server"]["location_name"] for entry in workspace["load_from"]]
    assert names[:2] == ["backup_pipelines", "verification"]
    assert all(name.startswith("backup_pipelines_") for name in names[2:]) and names[2:]

    values = yaml.safe_load((REPO / "deploy" / "helm" / "values-sites.yaml").read_text())
    assert values["computeLogManager"]["type"] == "S3ComputeLogManager"
    sites = 0
    for deployment in values["dagster-user-deployments"]["deployments"]:
        site = {e["name"]: e["value"] for e in deployment.get("env", [])}.get("BACKUP_SITE")
        args = deployment["dagsterApiGrpcArgs"]
        location = args[args.index("--location-name") + 1]
        if site:
            sites += 1
            assert location == f"backup_pipelines_{site}" and deployment["nodeSelector"]
    assert sites >= 2
