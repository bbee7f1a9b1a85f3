"""One definition per source: everything a source offers is generated from the registry, and
a source is named nowhere in the package but its own folder and the registry."""

import re
from pathlib import Path
from typing import get_args

import pytest
from dagster import AssetKey

from backup_pipelines.cli.parser import build_parser
from backup_pipelines.cron import cron_interval
from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines.dagster_defs.restore_job import restore_config
from backup_pipelines.dagster_defs.verification_location import build_verification
from backup_pipelines.sources.registry import KINDS, SOURCES
from backup_pipelines.sources.source import SECRET_OPTION
from backup_pipelines_tests.conftest import runtime_from_env

PACKAGE = Path(__file__).resolve().parents[1] / "backup_pipelines"


@pytest.mark.parametrize("source", KINDS)
def test_a_source_is_named_in_at_most_two_modules_outside_its_own_folder(source):
    """Docstrings and comments count: a newcomer adding a source must not have to hunt."""
    own = PACKAGE / "sources" / source
    word = re.compile(rf"\b{re.escape(source)}\b", re.IGNORECASE)
    naming = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if own not in path.parents and word.search(path.read_text())
    )
    assert len(naming) <= 2, naming


def test_every_source_gets_its_asset_checks_job_schedule_and_pool(backup_env):
    defs = build_definitions(runtime_from_env())
    schedules = {schedule.name: schedule for schedule in defs.schedules}
    for source in runtime_from_env().sources.values():
        key = AssetKey(f"{source.name}_backup")
        backup = defs.resolve_assets_def(key)
        [spec] = backup.specs
        assert spec.group_name == "backups" and backup.op.pool == source.name
        assert {dep.asset_key for dep in spec.deps} == {AssetKey(["crm", source.name])}
        assert spec.freshness_policy is not None
        checks = {check_key.name for check_key in backup.check_keys} | {
            check.name
            for checks_def in defs.asset_checks or []
            for check in checks_def.check_specs
            if check.asset_key == key
        }
        assert checks == {"integrity", "last_backup"}  # drills run in the verification plane
        job = defs.resolve_job_def(f"{source.name}_backup_job")
        assert schedules[f"{source.name}_backup_schedule"].cron_schedule == source.cron
        # the daemon ends a run that outlasts its schedule's gap (an hour at least)
        interval = cron_interval(source.cron).total_seconds()
        assert job.tags["dagster/max_runtime"] == str(int(max(3600, interval)))


def test_every_source_gets_its_verification_downstream_of_its_backup(backup_env):
    runtime = runtime_from_env()
    defs = build_verification(runtime)
    for source in runtime.sources.values():
        [spec] = defs.resolve_assets_def(AssetKey(f"{source.name}_verification")).specs
        assert spec.group_name == "verification" and spec.freshness_policy is not None
        assert {dep.asset_key for dep in spec.deps} == {AssetKey(f"{source.name}_backup")}
    [schedule] = defs.schedules
    assert (schedule.name, schedule.cron_schedule) == ("verification_schedule", "0 5 * * *")
    assert schedule.default_status.value == "RUNNING"


def test_restore_job_and_the_command_take_the_same_options(backup_env):
    """The launchpad offers every source (an enum), and every option the command takes but
    the secret ones (run config is stored with the run)."""
    config = restore_config(runtime_from_env().settings.kinds)
    assert list(get_args(config.model_fields["source"].annotation)) == list(KINDS)
    config_fields = set(config.model_fields)
    for source in SOURCES:
        fields = source.restore_options.model_fields
        argv = ["restore", source.kind]
        for name, info in fields.items():
            flag = source.restore_options.flag(name)
            argv += [flag] + ([] if info.annotation is bool else ["given"])
            assert (name in config_fields) == (info.json_schema_extra != SECRET_OPTION), name
        args = vars(build_parser().parse_args(argv))
        assert all(args[name] in ("given", True) for name in fields), args
    assert {"source", "snapshot", "target", "force"} <= config_fields
