"""The deployed shape, end to end: webserver, daemon and code server on loopback ports with
the production dagster.yaml (PostgreSQL storage, run queue), driven as operators drive it:
through the UI's GraphQL API, a request on RabbitMQ, and a real browser (Debian's chromium).
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pika
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.expected_conditions import (
    element_to_be_clickable as shown_and_enabled,
)
from selenium.webdriver.support.expected_conditions import (
    presence_of_element_located as drawn,
)
from selenium.webdriver.support.ui import WebDriverWait

from backup_pipelines.events.broker import EXCHANGE, REQUESTS_QUEUE
from backup_pipelines.sources.registry import KINDS as SOURCES
from backup_pipelines_tests.conftest import s3_client
from backup_pipelines_tests.dagster_stack import (
    VERIFICATION,
    DagsterStack,
    DagsterUI,
    running_stack,
)
from backup_pipelines_tests.postgres_fixtures import (
    appeared_elsewhere,
    connect,
    database_state,
    scratch_databases,
    unique_name,
)

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-results" / "browser"
BACKUP_ASSETS = [f"{source}_backup" for source in SOURCES]
# The small link nodes the graph draws for assets of another group, labelled with their name.
FOREIGN_NODE_LABELS = (By.CSS_SELECTOR, "[class*=ForeignNode] .label")
BROWSER_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1400,1800",  # the whole graph on one screen
]

MATERIALIZATIONS_QUERY = """
query Materializations($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(limit: 10) {
        runId
        metadataEntries { label ... on TextMetadataEntry { text } }
      }
    }
  }
}
"""
CHECKS_QUERY = """
query CheckEvaluations($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection {
      events { ... on AssetCheckEvaluationEvent { evaluation { checkName success } } }
    }
  }
}
"""
AUTOMATION_QUERY = """
query Automation($repository: RepositorySelector!) {
  schedulesOrError(repositorySelector: $repository) {
    ... on Schedules {
      results { name scheduleState { status } futureTicks(limit: 1) { results { timestamp } } }
    }
  }
  sensorsOrError(repositorySelector: $repository) {
    ... on Sensors { results { name sensorState { status ticks(limit: 1) { status } } } }
  }
}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[DagsterStack]:
    with running_stack(tmp_path_factory.mktemp("stack"), s3_endpoint) as running:
        yield running


def test_a_materialization_launched_as_the_ui_does_is_a_restorable_snapshot(stack):
    run_id = stack.materialize("postgres_backup")

    run = stack.wait_for_run(runIds=[run_id])
    assert run["status"] == "SUCCESS", stack.log_tails()
    assert run_id in [r["runId"] for r in stack.runs()], "the run is missing from the history"
    materializations = stack.graphql(MATERIALIZATIONS_QUERY, path=["postgres_backup"])
    latest = materializations["assetOrError"]["assetMaterializations"][0]
    assert latest["runId"] == run_id
    metadata = {entry["label"]: entry.get("text") for entry in latest["metadataEntries"]}
    assert metadata["snapshot_id"].endswith(run_id[:8])
    checks = {
        event["evaluation"]["checkName"]: event["evaluation"]["success"]
        for event in stack.graphql(CHECKS_QUERY, runId=run_id)["logsForRun"]["events"]
        if "evaluation" in event
    }
    # drills belong to the verification plane; last_backup is reported beside the run
    assert checks.get("integrity") is True and set(checks) <= {"integrity", "last_backup"}
    assert "postgres_backup" in compute_logs_read_from_s3(stack, stack.cli_env, run_id)

    restored = unique_name("bp_e2e_restored")
    with scratch_databases(restored):
        restore = subprocess.run(
            [sys.executable, "-m", "backup_pipelines.cli", "restore", "postgres",
             "--snapshot", metadata["snapshot_id"], "--database", stack.crm_database,
             "--target-dsn", f"postgresql://postgres@127.0.0.1:5432/{restored}"],
            env=stack.cli_env, capture_output=True, text=True,
        )  # fmt: skip
        assert restore.returncode == 0, restore.stderr
        assert database_state(restored) == database_state(stack.crm_database)


CAPTURED_QUERY = """
query Captured($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection { events { ... on LogsCapturedEvent { fileKey } } }
  }
}
"""
COMPUTE_LOGS_QUERY = """
query ComputeLogs($logKey: [String!]!) { capturedLogs(logKey: $logKey) { stdout stderr } }
"""


def compute_logs_read_from_s3(ui: DagsterUI, env: Mapping[str, str], run_id: str) -> str:
    """The run's stdout and stderr as the webserver serves them to the run's page, once the
    run's own copy on this host is gone: read from the S3 compute log manager's bucket (as
    `env` names it)."""
    events = ui.graphql(CAPTURED_QUERY, runId=run_id)["logsForRun"]["events"]
    [file_key] = {event["fileKey"] for event in events if "fileKey" in event}
    shutil.rmtree(Path(tempfile.gettempdir()) / run_id)  # where the run staged them
    bucket = env["DAGSTER_COMPUTE_LOGS_BUCKET"]
    s3 = s3_client(env["DAGSTER_COMPUTE_LOGS_ENDPOINT_URL"])
    stored = s3.list_objects_v2(Bucket=bucket, Prefix="compute-logs/").get("Contents", [])
    assert any(run_id in item["Key"] for item in stored), stored
    log_key = [run_id, "compute_logs", file_key]
    captured = ui.graphql(COMPUTE_LOGS_QUERY, logKey=log_key)["capturedLogs"]
    return (captured["stdout"] or "") + (captured["stderr"] or "")


LINEAGE_QUERY = """
query Lineage($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { dependencyKeys { path } dependedByKeys { path } }
  }
}
"""


def databases_on_the_machine_cluster() -> set[str]:
    with connect("postgres") as admin:
        return {row[0] for row in admin.execute("SELECT datname FROM pg_database").fetchall()}


def test_the_verification_location_drills_the_latest_snapshot_elsewhere(stack):
    """Downstream of the backup across locations; no database ever appears on the cluster
    that was backed up while the drill restores every database."""
    backup = stack.materialize("postgres_backup")
    assert stack.wait_for_run(runIds=[backup])["status"] == "SUCCESS", stack.log_tails()
    verification = stack.graphql(LINEAGE_QUERY, path=["postgres_verification"])
    assert verification["assetNodeOrError"]["dependencyKeys"] == [{"path": ["postgres_backup"]}]
    backups = stack.graphql(LINEAGE_QUERY, path=["postgres_backup"])["assetNodeOrError"]
    assert {"path": ["postgres_verification"]} in backups["dependedByKeys"]

    before, seen = databases_on_the_machine_cluster(), set()
    drill = stack.materialize("postgres_verification", location=VERIFICATION)
    while not stack.runs(runIds=[drill]) or stack.runs(runIds=[drill])[0]["status"] not in (
        "SUCCESS", "FAILURE", "CANCELED"
    ):  # fmt: skip
        seen |= databases_on_the_machine_cluster()
        time.sleep(0.1)
    assert stack.runs(runIds=[drill])[0]["status"] == "SUCCESS", stack.log_tails()
    assert appeared_elsewhere(seen - before), seen - before
    latest = stack.graphql(MATERIALIZATIONS_QUERY, path=["postgres_verification"])
    [proof] = latest["assetOrError"]["assetMaterializations"]
    assert proof["runId"] == drill


def test_a_second_run_of_a_source_waits_in_the_queue_until_the_first_ends(stack):
    with connect(stack.crm_database) as blocker:
        with blocker.transaction():
            # pg_dump waits for this lock, so the first backup stays in progress meanwhile.
            blocker.execute("LOCK TABLE crm.contacts IN ACCESS EXCLUSIVE MODE")
            first = stack.materialize("postgres_backup")
            wait_for_status(stack, first, "STARTED")
            second = stack.materialize("postgres_backup")
            time.sleep(10)  # several turns of the daemon's queue

            assert stack.runs(runIds=[second])[0]["status"] == "QUEUED"

    runs = [stack.wait_for_run(runIds=[run_id]) for run_id in (first, second)]
    assert [run["status"] for run in runs] == ["SUCCESS", "SUCCESS"]
    assert runs[1]["startTime"] >= runs[0]["endTime"]


def test_a_request_on_the_queue_makes_the_daemon_launch_a_backup(stack):
    connection = pika.BlockingConnection(pika.URLParameters(stack.rabbitmq_url))
    try:
        channel = connection.channel()
        channel.exchange_declare(EXCHANGE, "topic", durable=True)
        events = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(events, EXCHANGE, "backup.#")
        channel.queue_declare(REQUESTS_QUEUE, durable=True)
        reason = f"before the CRM upgrade {uuid.uuid4().hex[:6]}"
        channel.basic_publish(
            "",
            REQUESTS_QUEUE,
            json.dumps({"source": "rabbitmq", "reason": reason}).encode(),
            pika.BasicProperties(message_id=str(uuid.uuid4()), delivery_mode=2),
        )

        # The sensor ticks every 30 s; the run then waits in the queue for the daemon.
        run = stack.wait_for_run(timeout_s=150, tags=[{"key": "backup/reason", "value": reason}])

        assert (run["jobName"], run["status"]) == ("rabbitmq_backup_job", "SUCCESS")
        published = []
        deadline = time.monotonic() + 10
        while "backup.completed" not in published and time.monotonic() < deadline:
            method, _, body = channel.basic_get(events, auto_ack=True)
            if method is None:
                time.sleep(0.2)
            elif json.loads(body)["run_id"] == run["runId"]:
                published.append(method.routing_key)
        assert published == ["backup.started", "backup.completed"]
        # acked at the sensor's next tick, once the daemon held the run; never run twice
        deadline = time.monotonic() + 90
        while channel.queue_declare(REQUESTS_QUEUE, passive=True).method.message_count:
            assert time.monotonic() < deadline, "the request was never acked"
            time.sleep(1)
        assert len(stack.runs(tags=[{"key": "backup/reason", "value": reason}])) == 1
    finally:
        connection.close()


def test_every_schedule_and_sensor_runs_in_the_daemon(stack):
    repository = {"repositoryLocationName": "backup_pipelines", "repositoryName": "__repository__"}

    automation = stack.graphql(AUTOMATION_QUERY, repository=repository)

    schedules = automation["schedulesOrError"]["results"]
    assert sorted(s["name"] for s in schedules) == sorted(
        [f"{source}_backup_schedule" for source in SOURCES] + ["retention_schedule"]
    )
    for schedule in schedules:
        assert schedule["scheduleState"]["status"] == "RUNNING", schedule
        assert schedule["futureTicks"]["results"], f"{schedule['name']} has no next tick"
    sensors = automation["sensorsOrError"]["results"]
    assert {s["name"]: s["sensorState"]["status"] for s in sensors} == {
        "backup_requests_sensor": "RUNNING",
        "documents_change_sensor": "RUNNING",
        "backup_run_failure_sensor": "RUNNING",
        "backup_overdue_sensor": "RUNNING",
        "postgres_wal_sensor": "RUNNING",
        "notifications_outbox_sensor": "RUNNING",
    }
    ticked = {s["name"] for s in sensors if s["sensorState"]["ticks"]}
    assert {"backup_requests_sensor", "documents_change_sensor"} <= ticked
    verification = {"repositoryLocationName": VERIFICATION, "repositoryName": "__repository__"}
    automation = stack.graphql(AUTOMATION_QUERY, repository=verification)
    [schedule] = automation["schedulesOrError"]["results"]
    assert (schedule["name"], schedule["scheduleState"]["status"]) == (
        "verification_schedule",
        "RUNNING",
    )
    assert stack.unhealthy_daemons() == []


def wait_for_status(stack: DagsterStack, run_id: str, status: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while stack.runs(runIds=[run_id])[0]["status"] != status:
        assert time.monotonic() < deadline, f"run {run_id} never reached {status}"
        time.sleep(0.5)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / "last-page.png"))  # where a failure stopped
        driver.quit()


def wait_for(
    driver: webdriver.Chrome, xpath: str, timeout_s: float = 60, condition=shown_and_enabled
) -> WebElement:
    """The element, once the condition holds. The UI re-renders as data arrives, so elements
    that go stale are looked up again."""
    return WebDriverWait(
        driver, timeout_s, ignored_exceptions=[StaleElementReferenceException]
    ).until(condition((By.XPATH, xpath)))


def foreign_nodes(driver: webdriver.Chrome) -> set[str] | bool:
    """Names of the nodes drawn around the group: upstream (the `crm` group) and downstream
    (the verification location's assets), once all are drawn."""
    names = {e.get_attribute("title") for e in driver.find_elements(*FOREIGN_NODE_LABELS)}
    return names if len(names) >= 2 * len(SOURCES) else False


def test_an_operator_sees_the_lineage_and_materializes_from_the_browser(stack, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    browser.get(f"{stack.url}/locations/backup_pipelines/asset-groups/backups")
    for name in BACKUP_ASSETS:
        wait_for(browser, f"//*[@data-tooltip='{name}']", condition=drawn)  # may be off-screen
    around = WebDriverWait(browser, 30).until(foreign_nodes)
    browser.save_screenshot(str(SCREENSHOTS / "asset-lineage.png"))
    assert around == {*SOURCES, *(f"{source}_verification" for source in SOURCES)}

    browser.get(f"{stack.url}/assets/rabbitmq_backup")
    wait_for(browser, "//*[normalize-space()='crm / rabbitmq']")  # its upstream asset
    wait_for(browser, "//button[normalize-space()='Materialize']").click()
    run_link = wait_for(browser, "//a[starts-with(@href, '/runs/')][normalize-space()='View']")
    run_id = run_link.get_attribute("href").rsplit("/", 1)[-1]
    run_link.click()
    wait_for(browser, "//*[normalize-space()='Success']", timeout_s=120)
    browser.save_screenshot(str(SCREENSHOTS / "materialized-run.png"))

    assert stack.runs(runIds=[run_id])[0]["status"] == "SUCCESS"


def test_an_operator_restores_a_snapshot_from_the_restore_job_launchpad(stack, browser):
    """The UI's own restore path: the launchpad of restore_job, config typed in, Launch Run."""
    backup = stack.materialize("postgres_backup")
    assert stack.wait_for_run(runIds=[backup])["status"] == "SUCCESS", stack.log_tails()
    restored = unique_name("bp_e2e_launchpad")
    config = (
        "ops:\n  restore_snapshot:\n    config:\n      source: postgres\n"
        f"      target: postgresql://postgres@127.0.0.1:5432/{restored}\n"
        f"      database: {stack.crm_database}\n"
    )
    with scratch_databases(restored):
        browser.get(f"{stack.url}/locations/backup_pipelines/jobs/restore_job/playground")
        editor = wait_for(browser, "//div[contains(@class, 'CodeMirror')]", condition=drawn)
        browser.execute_script("arguments[0].CodeMirror.setValue(arguments[1])", editor, config)
        browser.save_screenshot(str(SCREENSHOTS / "restore-job-launchpad.png"))
        wait_for(browser, "//button[normalize-space()='Launch Run']").click()
        WebDriverWait(browser, 60).until(lambda driver: "/runs/" in driver.current_url)
        run_id = browser.current_url.rstrip("/").rsplit("/", 1)[-1]
        wait_for(browser, "//*[normalize-space()='Success']", timeout_s=120)
        browser.save_screenshot(str(SCREENSHOTS / "restored-from-the-launchpad.png"))

        assert stack.runs(runIds=[run_id])[0]["jobName"] == "restore_job"
        assert database_state(restored) == database_state(stack.crm_database)
