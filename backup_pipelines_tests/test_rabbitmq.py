"""RabbitMQ against the machine's broker: back up a vhost's topology, delete it, restore it."""

import json
import uuid
from urllib.parse import quote

import pika
import pytest
import requests

from backup_pipelines.cli import main
from backup_pipelines.events.broker import EXCHANGE, OWN_QUEUES
from backup_pipelines.snapshot.staging import stage
from backup_pipelines.sources.rabbitmq.api import ManagementApi, RabbitUnavailable
from backup_pipelines.sources.rabbitmq.definitions import SECTIONS, only_vhost
from backup_pipelines.sources.rabbitmq.dump import dump_definitions
from backup_pipelines_tests.conftest import (
    RUN_ID,
    checks_of,
    commit_snapshot,
    failed_at_once,
    flip_byte,
    metadata_of,
    run_backup,
    run_verification,
    runtime_from_env,
    store_from_env,
    verification_of,
)

MANAGEMENT = "http://127.0.0.1:15672"
USER_PASSWORD = "crm-user-pw-never-shown"


def admin(method: str, path: str, body: dict | None = None) -> requests.Response:
    response = requests.request(
        method, f"{MANAGEMENT}/api/{path}", auth=("guest", "guest"), json=body, timeout=30
    )
    assert response.status_code < 400, response.text
    return response


@pytest.fixture
def crm_topology(backup_env, broker_definitions):
    """A vhost with a user, permissions, a policy, exchanges, a classic and a quorum queue."""
    vhost, user = f"bp-crm-{uuid.uuid4().hex[:8]}", f"bp-user-{uuid.uuid4().hex[:8]}"
    v = quote(vhost, safe="")
    admin("PUT", f"vhosts/{v}")
    admin("PUT", f"users/{user}", {"password": USER_PASSWORD, "tags": "monitoring"})
    admin("PUT", f"permissions/{v}/{user}", {"configure": "^crm\\.", "write": ".*", "read": ".*"})
    admin(
        "PUT",
        f"topic-permissions/{v}/{user}",
        {"exchange": "amq.topic", "write": "^crm\\.", "read": ".*"},
    )
    admin(
        "PUT",
        f"policies/{v}/crm-ttl",
        {
            "pattern": "^crm\\.",
            "apply-to": "queues",
            "definition": {"message-ttl": 60000},
            "priority": 1,
        },
    )
    admin("PUT", f"exchanges/{v}/crm.events", {"type": "topic", "durable": True})
    admin("PUT", f"exchanges/{v}/crm.dlx", {"type": "fanout", "durable": True})
    admin(
        "PUT",
        f"queues/{v}/crm.classic",
        {"durable": True, "arguments": {"x-max-length": 1000, "x-dead-letter-exchange": "crm.dlx"}},
    )
    admin(
        "PUT",
        f"queues/{v}/crm.quorum",
        {"durable": True, "arguments": {"x-queue-type": "quorum", "x-delivery-limit": 5}},
    )
    admin("POST", f"bindings/{v}/e/crm.events/q/crm.classic", {"routing_key": "contact.*"})
    admin(
        "POST",
        f"bindings/{v}/e/crm.events/q/crm.quorum",
        {"routing_key": "deal.#", "arguments": {"x-match": "all"}},
    )
    try:
        yield vhost, user
    finally:
        requests.delete(f"{MANAGEMENT}/api/vhosts/{v}", auth=("guest", "guest"), timeout=30)
        requests.delete(f"{MANAGEMENT}/api/users/{user}", auth=("guest", "guest"), timeout=30)


def vhost_state(vhost: str) -> dict:
    """The broker's definitions of one vhost and its users, in a comparable order."""
    part = only_vhost(admin("GET", "definitions").json(), vhost)
    return {
        section: sorted(json.dumps(item, sort_keys=True) for item in items)
        for section, items in part.items()
    }


def test_deleted_topology_comes_back_and_the_user_logs_in(store_env, crm_topology, capsys):
    vhost, user = crm_topology
    before = vhost_state(vhost)
    assert len(before["queues"]) == 2 and len(before["bindings"]) == 2 and before["users"]
    password_hash = json.loads(before["users"][0])["password_hash"]

    result = run_backup("rabbitmq")
    assert result.success
    metadata = metadata_of(result, "rabbitmq")
    assert metadata["vhosts"] >= 2 and metadata["queues"] >= 2 and metadata["policies"] >= 1
    assert metadata["broker_version"].startswith("3.")
    every_log = " ".join(str(event.message) for event in result.all_events)
    assert password_hash not in json.dumps(metadata, default=str) + every_log
    assert checks_of(result)["integrity"].passed
    drilled = verification_of(run_verification("rabbitmq"), "rabbitmq")
    assert drilled["passed"] and drilled["queues"] >= 2 and drilled["bindings"] >= 2
    assert main(["verify", "rabbitmq", "--deep"]) == 0

    admin("DELETE", f"vhosts/{quote(vhost, safe='')}")
    admin("DELETE", f"users/{user}")
    assert main(["restore", "rabbitmq", "--management-url", MANAGEMENT, "--vhost", vhost]) == 0
    assert vhost_state(vhost) == before
    connection = pika.BlockingConnection(
        pika.URLParameters(f"amqp://{user}:{USER_PASSWORD}@127.0.0.1:5672/{quote(vhost, safe='')}")
    )
    channel = connection.channel()
    channel.basic_publish("crm.events", "deal.won", b"restored")
    connection.close()
    output = capsys.readouterr()
    assert password_hash not in output.out + output.err


def test_full_restore_needs_force_on_a_broker_with_objects(backup_env, crm_topology, capsys):
    vhost, _ = crm_topology
    assert run_backup("rabbitmq").success
    command = ["restore", "rabbitmq", "--management-url", MANAGEMENT]
    assert main(command) == 1
    refusal = capsys.readouterr().err
    assert "already has objects in" in refusal and "add --force" in refusal
    assert f"'{vhost}' (2 queues, 2 exchanges)" in refusal
    assert main([*command, "--force"]) == 0


def test_wrong_credentials_fail_the_run_at_once(backup_env, monkeypatch):
    monkeypatch.setenv("BACKUP_RABBITMQ_ADMIN_PASSWORD", "wrong-admin-pw")
    message = failed_at_once(run_backup("rabbitmq"), "wrong-admin-pw")
    assert "rejected user 'guest'; check BACKUP_RABBITMQ_ADMIN_USER" in message
    assert store_from_env().list_snapshots("rabbitmq") == []


def test_unreachable_management_api_is_a_clear_retryable_error(staging_dir):
    api = ManagementApi("http://127.0.0.1:1", "guest", "admin-pw-never-shown")
    with pytest.raises(RabbitUnavailable) as failure:
        with stage(staging_dir, "rabbitmq", RUN_ID) as staged:
            dump_definitions(staged, api)
    assert "cannot reach the RabbitMQ management API at http://127.0.0.1:1" in str(failure.value)
    assert "admin-pw-never-shown" not in str(failure.value)
    assert list((staging_dir / "rabbitmq").iterdir()) == []


def commit_definitions(definitions: object) -> None:
    """A rabbitmq snapshot holding exactly `definitions` (as a tampering hand would leave it)."""
    runtime = runtime_from_env()
    commit_snapshot(
        runtime.store,
        runtime.staging.directory,
        {"definitions.json": json.dumps(definitions).encode()},
        source="rabbitmq",
    )


def test_the_drill_finds_objects_that_an_import_would_lose(backup_env, capsys):
    sections = {
        section: []
        for section in ("users", "permissions", "topic_permissions", "parameters",
                        "global_parameters", "policies", "exchanges")
    }  # fmt: skip
    definitions = {
        **sections,
        "vhosts": [{"name": "crm"}],
        "queues": [{"name": "crm.events", "vhost": "crm"}],
        "bindings": [
            {"vhost": "crm", "source": "amq.topic", "destination": "crm.events",
             "destination_type": "queue"},
            {"vhost": "crm", "source": "crm.gone", "destination": "crm.missing",
             "destination_type": "queue"},
        ],
    }  # fmt: skip
    commit_definitions(definitions)
    assert main(["drill", "rabbitmq"]) == 1
    problems = capsys.readouterr().err
    assert "a binding in 'crm' names the exchange 'crm.gone', not defined" in problems
    assert "a binding in 'crm' names the queue 'crm.missing', not defined" in problems
    assert "amq.topic" not in problems and "crm.events" not in problems


def test_deep_verify_finds_definitions_that_do_not_parse(backup_env, capsys):
    runtime = runtime_from_env()
    store, staging_dir = runtime.store, runtime.staging.directory
    commit_snapshot(
        store, staging_dir, {"definitions.json": b'{"vhosts": [trunc'}, source="rabbitmq"
    )
    assert main(["verify", "rabbitmq", "--deep"]) == 1
    assert "is not JSON" in capsys.readouterr().err
    commit_snapshot(
        store,
        staging_dir,
        {"definitions.json": b'{"vhosts": []}'},
        source="rabbitmq",
        run_id="ffffffff-run",
    )
    assert main(["verify", "rabbitmq", "--deep"]) == 1
    assert "definitions.json has no 'users' list" in capsys.readouterr().err


def test_a_drill_of_definitions_whose_items_are_not_objects_says_so(backup_env, capsys):
    """A tampered export (a string where a queue should be) is a finding, not a traceback."""
    definitions = {section: [] for section in SECTIONS} | {"vhosts": ["crm"], "queues": [7]}
    commit_definitions(definitions)
    assert main(["drill", "rabbitmq"]) == 1
    problems = capsys.readouterr().err
    assert "definitions.json's 'vhosts' holds an item that is not a JSON object" in problems
    assert "definitions.json's 'queues' holds an item that is not a JSON object" in problems
    assert "Error" not in problems


def test_this_projects_own_queues_do_not_make_a_broker_occupied(backup_env, crm_topology):
    """Events and requests live on the broker being backed up: they are not the CRM's objects."""
    vhost, _ = crm_topology
    v = quote(vhost, safe="")
    admin("PUT", f"exchanges/{v}/{EXCHANGE}", {"type": "topic", "durable": True})
    for queue in OWN_QUEUES:
        admin("PUT", f"queues/{v}/{queue}", {"durable": True})
    before = vhost_state(vhost)
    assert run_backup("rabbitmq").success
    for queue in ("crm.classic", "crm.quorum"):
        admin("DELETE", f"queues/{v}/{queue}")
    for exchange in ("crm.events", "crm.dlx"):
        admin("DELETE", f"exchanges/{v}/{exchange}")

    command = ["restore", "rabbitmq", "--management-url", MANAGEMENT, "--vhost", vhost]
    assert main(command) == 0  # no --force needed: only our own objects were there
    assert vhost_state(vhost) == before


def test_damaged_definitions_never_reach_the_broker(backup_env, crm_topology, capsys):
    vhost, _ = crm_topology
    assert run_backup("rabbitmq").success
    store = store_from_env()
    snapshot_id = store.find("rabbitmq").snapshot_id
    flip_byte(store, snapshot_id, "definitions.json.zst", offset=40, source="rabbitmq")
    admin("DELETE", f"queues/{quote(vhost, safe='')}/crm.classic")
    before = vhost_state(vhost)

    command = ["restore", "rabbitmq", "--management-url", MANAGEMENT, "--vhost", vhost]
    assert main([*command, "--force"]) == 1
    assert "stored bytes do not match the manifest" in capsys.readouterr().err
    assert vhost_state(vhost) == before
