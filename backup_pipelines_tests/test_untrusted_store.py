"""The store as untrusted input: tampered manifests, ids and names never make the system read,
write or delete outside the snapshot's own location, nor lose another snapshot.

The property test records every file-system call Python makes (an audit hook) and every S3
request (a botocore hook) while the real commands run on a store whose newest snapshot's
manifest hypothesis has mutated at random.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backup_pipelines.cli import main
from backup_pipelines.retention.policy import RetentionRules
from backup_pipelines.retention.pruning import apply_retention
from backup_pipelines.snapshot.manifest import MANIFEST_NAME, new_snapshot_id
from backup_pipelines.snapshot.reader import verify_snapshot
from backup_pipelines.snapshot.staging import stage
from backup_pipelines.snapshot.store import SnapshotStore
from backup_pipelines.storage.layout import AUDIT
from backup_pipelines_tests.conftest import (
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    make_local_store,
    make_s3_store,
    read_manifest_bytes,
    replace_manifest,
    run_job,
    s3_client,
)
from backup_pipelines_tests.redis_fixtures import redis_process

SOURCE = "redis"
NEWEST = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
SENTINEL = "SENTINEL"  # stands for the absolute path of the sentinel directory
UNEXPECTED = re.compile(r"^error: \w+(Error|Exception): ", re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# Recording what the code under test touches


class FileCalls:
    """Every path-bearing file-system call Python makes while recording: (kind, absolute path)."""

    recording: list[tuple[str, str]] | None = None
    DELETES = {"os.remove", "os.rmdir", "shutil.rmtree"}
    WRITES = {"os.mkdir", "os.rename", "os.truncate", "os.symlink", "os.link", "os.chmod"}
    READS = {"os.scandir", "os.listdir"}

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.recording is None:
            return
        kind = cls._kind(event, args)
        if kind is None:
            return
        paths = args[:2] if event in ("os.rename", "os.symlink", "os.link") else args[:1]
        for path in paths:
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if isinstance(path, str | os.PathLike):
                cls.recording.append((kind, os.path.normpath(os.path.abspath(path))))

    @classmethod
    def _kind(cls, event: str, args: tuple) -> str | None:
        dir_fd = {"os.remove": 1, "os.rmdir": 1, "shutil.rmtree": 1, "os.mkdir": 2}.get(event)
        if dir_fd is not None and len(args) > dir_fd and args[dir_fd] is not None:
            return None  # relative to a directory whose own path was recorded
        if event == "open":
            mode, flags = args[1], args[2]
            writing = (mode and any(c in mode for c in "wax+")) or (
                flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
            )
            return "write" if writing else "read"
        if event in cls.DELETES:
            return "delete"
        if event in cls.WRITES:
            return "write"
        return "read" if event in cls.READS else None

    @classmethod
    @contextlib.contextmanager
    def record(cls) -> Iterator[list[tuple[str, str]]]:
        cls.recording = []
        try:
            yield cls.recording
        finally:
            cls.recording = None


sys.addaudithook(FileCalls.hook)


@contextlib.contextmanager
def s3_requests() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every S3 request boto3 makes in this process while recording: (operation, params)."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def capture(params: dict[str, Any], model: Any, **_: Any) -> None:
        seen.append((model.name, params))

    session = boto3.session.Session
    original = session.client

    def client(self, *args, **kwargs):
        made = original(self, *args, **kwargs)
        made.meta.events.register("provide-client-params.s3.*", capture)
        return made

    with mock.patch.object(session, "client", client):
        yield seen


# ---------------------------------------------------------------------------------------------
# A small world: a store with three snapshots, a sentinel directory beside it, an output dir


@pytest.fixture(scope="module")
def rdb(tmp_path_factory) -> bytes:
    """A real RDB, as redis-server writes it."""
    directory = tmp_path_factory.mktemp("rdb")
    with redis_process(directory) as client:
        client.set("customer:1", "ada")
        client.hset("deal:7", mapping={"stage": "won"})
        client.save()
    return (directory / "dump.rdb").read_bytes()


def snapshot_ids() -> list[str]:
    """Oldest first; the last is the one whose manifest gets tampered with."""
    return [new_snapshot_id(f"{n:08x}", NEWEST - timedelta(days=3 - n)) for n in range(3)]


def fill_store(store: SnapshotStore, staging: Path, rdb: bytes) -> None:
    for n, snapshot_id in enumerate(snapshot_ids()):
        with stage(staging, SOURCE, f"{n:08x}") as staged:
            staged.snapshot_id = snapshot_id
            staged.started_at = NEWEST - timedelta(days=3 - n)
            staged.add_stream("dump.rdb", [rdb], expect_prefix=b"REDIS")
        store.commit(staged)
        staged.discard()


def digests(root: Path, skip: Path | None = None) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and (skip is None or skip not in path.parents):
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# ---------------------------------------------------------------------------------------------
# What hypothesis mutates

NAMES = [
    "../sentinel",
    "../../sentinel/secret.txt",
    "../../../sentinel",
    SENTINEL,
    f"{SENTINEL}/secret.txt",
    "..",
    ".",
    "",
    "/",
    "a/b",
    "a\\b",
    "dump.rdb.zst/..",
    "x\x00y",
    "tab\there",
    "\n",
    "manifest.json",
    "dump.rdb.zst",
    "dump.rdb.zst\n",
    "appendonlydir...",
    "appendonlydir.",
    "redis/../postgres",
    *snapshot_ids(),
    snapshot_ids()[0] + "\n",
    "\u0662\u0660\u0662\u0666\u0661\u0661\u0661\u0667T030000Z-00000000",  # other digits
    "../" + snapshot_ids()[0],
]
values = st.one_of(
    st.sampled_from(NAMES),
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.none(),
    st.booleans(),
    st.lists(st.sampled_from(NAMES), max_size=3),
    st.dictionaries(st.sampled_from(["name", "size", "sha256"]), st.sampled_from(NAMES)),
)
FIELDS = [
    "format",
    "version",
    "source",
    "snapshot_id",
    "started_at",
    "finished_at",
    "run_id",
    "compression",
    "encryption",
    "files",
    "stats",
    "file.name",
    "file.size",
    "file.sha256",
    "extra file",
    "stats.restic_snapshot_id",
    "stats.root",
]
mutations = st.lists(st.tuples(st.sampled_from(FIELDS), values), min_size=1, max_size=4)
whole = st.one_of(
    st.binary(max_size=200),
    st.just(b"[" * 30_000 + b"]" * 30_000),
    st.just(b'{"files": ' * 5000),
    st.just(b"null"),
)
tampering = st.one_of(mutations, whole)


def tampered(manifest: dict[str, Any], how: Any, sentinel: Path) -> bytes:
    """The manifest with `how` applied: a list of (field, value), or whole replacement bytes."""
    if isinstance(how, bytes):
        return how
    manifest = json.loads(json.dumps(manifest))
    for field, value in how:
        value = _placed(value, sentinel)
        files = manifest.get("files")
        first = files[0] if isinstance(files, list) and files else None
        if field.startswith("file.") and isinstance(first, dict):
            first[field.removeprefix("file.")] = value
        elif field == "extra file" and isinstance(files, list):
            files.append({"name": value, "size": 1, "sha256": "0" * 64})
        elif field.startswith("stats.") and isinstance(manifest.get("stats"), dict):
            manifest["stats"][field.removeprefix("stats.")] = value
        elif "." not in field and field != "extra file":
            manifest[field] = value
    return json.dumps(manifest).encode()


def _placed(value: Any, sentinel: Path) -> Any:
    if isinstance(value, str):
        return value.replace(SENTINEL, str(sentinel))
    if isinstance(value, list):
        return [_placed(item, sentinel) for item in value]
    if isinstance(value, dict):
        return {key: _placed(item, sentinel) for key, item in value.items()}
    return value


# ---------------------------------------------------------------------------------------------
# The property


def run_commands(world: Path, env: dict[str, str], snapshot_arg: str) -> str:
    """What operators and Dagster do with a store; returns what the commands printed."""
    target = snapshot_ids()[-1]
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, env),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        assert main(["snapshots", "--json"]) == 0
        assert main(["snapshots", SOURCE]) == 0
        assert main(["verify", SOURCE, "--snapshot", target]) in (0, 1)
        assert main(["verify", SOURCE]) in (0, 1)
        assert main(["verify", SOURCE, f"--snapshot={snapshot_arg}"]) in (0, 1, 2)
        output = world / "restored"
        for snapshot in (target, snapshot_arg):
            command = ["restore", SOURCE, "--output-dir", str(output), f"--snapshot={snapshot}"]
            assert main([*command, "--force"]) in (0, 1, 2)
        assert main(["prune", "--dry-run", "--json"]) == 0
    return out.getvalue() + err.getvalue()


PROPERTY = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def prune_two_days_on(store: SnapshotStore, sources, staging_dir: Path | None = None) -> list:
    """Retention as it will run once every leftover is older than a day."""
    later = datetime.now(UTC) + timedelta(days=2)
    quiet = lambda _: None  # noqa: E731
    return apply_retention(
        store,
        sources,
        RetentionRules(),
        dry_run=False,
        now=later,
        staging_dir=staging_dir,
        log=quiet,
    )


def untampered(store: SnapshotStore, target: str) -> list:
    """The other snapshots: a mutation may leave the target's manifest valid but untrue."""
    return [s for s in store.list_snapshots(SOURCE) if s.snapshot_id != target]


def check_untouched(calls: list[tuple[str, str]], world: Path, allowed: dict[str, list[Path]]):
    """No call reaches the sentinel; writes and deletes in the world only where allowed."""
    sentinel = str(world / "sentinel")
    for kind, path in calls:
        assert not (path == sentinel or path.startswith(sentinel + os.sep)), (kind, path)
        if kind == "read" or not path.startswith(str(world) + os.sep):
            continue
        places = [str(place) for place in allowed[kind]]
        assert any(path == p or path.startswith(p + os.sep) for p in places), (kind, path)


def world_with(root: Path) -> tuple[Path, Path, Path]:
    sentinel = root / "sentinel"
    sentinel.mkdir()
    (sentinel / "secret.txt").write_text("must never be read, written or deleted")
    (sentinel / "20261101T000000Z-aaaaaaaa").mkdir()
    return root, root / "artifacts", sentinel


@pytest.mark.slow
@settings(PROPERTY, max_examples=150)
@example(how=[("file.size", 0)], snapshot_arg="../sentinel")  # valid, but not true of its bytes
@given(how=tampering, snapshot_arg=st.one_of(st.sampled_from(NAMES), st.text(max_size=30)))
def test_a_tampered_manifest_never_reaches_outside_its_snapshot_local(
    rdb, sources, how, snapshot_arg
):
    with tempfile.TemporaryDirectory() as scratch:
        world, artifacts, sentinel = world_with(Path(scratch))
        store = make_local_store(artifacts)
        fill_store(store, artifacts / ".staging", rdb)
        *others, target = snapshot_ids()
        location = artifacts / SOURCE / target
        manifest = json.loads((location / MANIFEST_NAME).read_bytes())
        (location / MANIFEST_NAME).write_bytes(tampered(manifest, how, sentinel))
        before = digests(world, skip=location)
        env = {"BACKUP_ARTIFACTS_DIR": str(artifacts)}

        with FileCalls.record() as calls:
            printed = run_commands(world, env, _placed(snapshot_arg, sentinel))
            reports = prune_two_days_on(store, sources, artifacts / ".staging")

        assert not UNEXPECTED.search(printed), printed
        check_untouched(
            calls,
            world,
            {
                # the commands' audit records, at keys no manifest chooses
                "write": [artifacts / ".staging", artifacts / AUDIT, world / "restored"],
                "delete": [artifacts / ".staging", world / "restored", location],
            },
        )
        after = digests(world, skip=location)
        assert {
            k: v for k, v in after.items() if not k.startswith(("restored", "artifacts/."))
        } == {k: v for k, v in before.items() if not k.startswith("artifacts/.")}
        kept = {s.snapshot_id for s in store.list_snapshots(SOURCE)}
        assert set(others) <= kept  # nothing a tampered manifest says deletes another snapshot
        assert all(verify_snapshot(store, s) == [] for s in untampered(store, target))
        [report] = [r for r in reports if r.source == SOURCE]
        assert set(report.delete + report.leftovers) <= {target}


@pytest.fixture(scope="module")
def template_store(rdb, tmp_path_factory) -> dict[str, bytes]:
    """The three snapshots' objects (key under the source → bytes), to copy into each bucket."""
    root = tmp_path_factory.mktemp("template") / "artifacts"
    fill_store(make_local_store(root), root / ".staging", rdb)
    return {
        str(path.relative_to(root / SOURCE)): path.read_bytes()
        for path in (root / SOURCE).rglob("*")
        if path.is_file()
    }


@pytest.mark.slow
@settings(PROPERTY, max_examples=10)
@given(how=tampering, snapshot_arg=st.sampled_from(NAMES))
def test_a_tampered_manifest_never_reaches_outside_its_snapshot_s3(
    s3_endpoint, template_store, sources, how, snapshot_arg
):
    bucket = f"untrusted-{os.urandom(6).hex()}"
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=bucket)
    *others, target = snapshot_ids()
    for key, body in template_store.items():
        client.put_object(Bucket=bucket, Key=f"backups/{SOURCE}/{key}", Body=body)
    manifest_key = f"backups/{SOURCE}/{target}/{MANIFEST_NAME}"
    manifest = json.loads(client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    with tempfile.TemporaryDirectory() as scratch:
        world, artifacts, sentinel = world_with(Path(scratch))
        artifacts.mkdir(mode=0o700)  # as the deployment made it: a missing one is made private
        client.put_object(Bucket=bucket, Key=manifest_key, Body=tampered(manifest, how, sentinel))
        env = {
            "BACKUP_ARTIFACTS_DIR": str(artifacts),
            "BACKUP_S3_ENDPOINT_URL": s3_endpoint,
            "BACKUP_S3_BUCKET": bucket,
            "BACKUP_S3_ACCESS_KEY": S3_ACCESS_KEY,
            "BACKUP_S3_SECRET_KEY": S3_SECRET_KEY,
        }
        store = make_s3_store(s3_endpoint, bucket)
        with FileCalls.record() as calls, s3_requests() as requests:
            printed = run_commands(world, env, _placed(snapshot_arg, sentinel))
            prune_two_days_on(store, sources)

        assert not UNEXPECTED.search(printed), printed
        check_untouched(
            calls,
            world,
            {
                # the commands' audit records, at keys no manifest chooses
                "write": [artifacts / ".staging", artifacts / AUDIT, world / "restored"],
                "delete": [artifacts / ".staging", world / "restored"],
            },
        )
    for operation, params in requests:
        assert operation not in ("CreateMultipartUpload", "CopyObject"), operation
        for key in _keys_of(params):
            segments = key.split("/")
            assert segments[0] == "backups" and ".." not in segments, (operation, key)
            if operation == "PutObject":  # only the commands' own audit records
                assert key.startswith(f"backups/{AUDIT}/"), (operation, key)
            if operation in ("GetObject", "HeadObject"):
                assert key.startswith(f"backups/{SOURCE}/"), (operation, key)
            if operation in ("DeleteObject", "DeleteObjects", "AbortMultipartUpload"):
                assert key.startswith(f"backups/{SOURCE}/{target}/"), (operation, key)
    assert set(others) <= {s.snapshot_id for s in store.list_snapshots(SOURCE)}
    assert all(verify_snapshot(store, s) == [] for s in untampered(store, target))


def _keys_of(params: dict[str, Any]) -> list[str]:
    keys = [params[name] for name in ("Key", "Prefix") if name in params]
    keys += [item["Key"] for item in params.get("Delete", {}).get("Objects", [])]
    return keys


# ---------------------------------------------------------------------------------------------
# The faults of the issue, one by one


def test_a_manifest_naming_another_snapshot_is_reported_and_decides_no_delete(
    store, staging_dir, rdb, sources
):
    fill_store(store, staging_dir, rdb)
    oldest, middle, newest = snapshot_ids()
    replace_manifest(
        store, SOURCE, newest, read_manifest_bytes(store, SOURCE, oldest)
    )  # another snapshot's manifest, copied over

    assert [s.snapshot_id for s in store.list_snapshots(SOURCE)] == [middle, oldest]
    [found] = store.survey(SOURCE).unreadable
    assert found.snapshot_id == newest and "not the location it was read from" in found.reason
    rules = RetentionRules(daily=1, weekly=0, monthly=0, yearly=0)
    now = datetime.now(UTC)
    [report] = [
        r
        for r in apply_retention(store, sources, rules, dry_run=False, now=now)
        if r.source == SOURCE
    ]
    assert report.keep == [middle] and report.delete == [oldest] and report.leftovers == []
    assert store.survey(SOURCE).unreadable  # a day younger: kept for an operator to look at
    later = now + timedelta(days=2)
    reports = apply_retention(store, sources, rules, dry_run=False, now=later)
    [report] = [r for r in reports if r.source == SOURCE]
    assert report.leftovers == [newest]
    assert [s.snapshot_id for s in store.list_snapshots(SOURCE)] == [middle]
    assert store.survey(SOURCE).unreadable == []


def test_path_shaped_ids_and_names_are_refused_by_the_commands(backup_env, rdb, capsys, tmp_path):
    store = make_local_store(backup_env)
    fill_store(store, backup_env / ".staging", rdb)
    outside = tmp_path / "outside"
    outside.mkdir()
    for snapshot in ("../../outside", "/etc", "20261120T030000Z-00000002/../x"):
        assert main(["verify", SOURCE, "--snapshot", snapshot]) == 2
        assert "is not a snapshot id" in capsys.readouterr().err
    newest = snapshot_ids()[-1]
    location = backup_env / SOURCE / newest
    manifest = json.loads((location / MANIFEST_NAME).read_bytes())
    manifest["files"][0]["name"] = "../../../outside/dump.rdb.zst"
    (location / MANIFEST_NAME).write_text(json.dumps(manifest))

    assert main(["snapshots"]) == 0
    err = capsys.readouterr().err
    assert f"{location}/: {SOURCE}/{newest}: manifest.json is not valid (files.0.name:" in err
    assert "is a path, not a file name" in err
    assert main(["verify", SOURCE, "--snapshot", newest]) == 1
    assert "is a path, not a file name" in capsys.readouterr().err
    restored = tmp_path / "restored"
    command = ["restore", SOURCE, "--output-dir", str(restored), "--snapshot", newest]
    assert main(command) == 1
    assert list(outside.iterdir()) == [] and not restored.exists()


def test_a_symbolic_link_in_the_store_is_never_followed(backup_env, rdb, tmp_path, capsys, sources):
    store = make_local_store(backup_env)
    fill_store(store, backup_env / ".staging", rdb)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(backup_env / SOURCE / snapshot_ids()[0], elsewhere)
    planted = new_snapshot_id("ffffffff", NEWEST + timedelta(days=1))
    (backup_env / SOURCE / planted).symlink_to(elsewhere)
    artifact = backup_env / SOURCE / snapshot_ids()[-1] / "dump.rdb.zst"
    artifact.unlink()
    artifact.symlink_to(elsewhere / "dump.rdb.zst")

    assert planted not in {s.snapshot_id for s in store.list_snapshots(SOURCE)}
    assert main(["verify", SOURCE]) == 1
    assert "dump.rdb.zst is a symbolic link; the store never follows one" in capsys.readouterr().err
    rules = RetentionRules(daily=1, weekly=0, monthly=0, yearly=0)
    later = datetime.now(UTC) + timedelta(days=2)
    apply_retention(store, sources, rules, dry_run=False, now=later, log=lambda _: None)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["dump.rdb.zst", MANIFEST_NAME]


def test_restore_job_refuses_a_path_for_a_snapshot(backup_env, rdb, tmp_path, monkeypatch):
    fill_store(make_local_store(backup_env), backup_env / ".staging", rdb)
    monkeypatch.setenv("BACKUP_RESTORE_ROOTS", str(tmp_path))
    config = {"source": SOURCE, "snapshot": "../../outside", "output_dir": str(tmp_path / "o")}
    result = run_job("restore_job", run_config={"ops": {"restore_snapshot": {"config": config}}})
    assert not result.success
    [failure] = [event for event in result.all_events if event.is_step_failure]
    description = failure.step_failure_data.user_failure_data.description
    assert description.endswith("'../../outside' is not a snapshot id (YYYYMMDDTHHMMSSZ-xxxxxxxx)"
                                " or 'latest'")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_a_redis_file_name_that_names_no_file_is_refused(backup_env, rdb, tmp_path, capsys):
    store = make_local_store(backup_env)
    fill_store(store, backup_env / ".staging", rdb)
    newest = snapshot_ids()[-1]
    manifest = json.loads(read_manifest_bytes(store, SOURCE, newest))
    manifest["files"].append({"name": "appendonlydir..zst", "size": 1, "sha256": "0" * 64})
    replace_manifest(store, SOURCE, newest, json.dumps(manifest).encode())
    output = tmp_path / "out"
    assert main(["restore", SOURCE, "--output-dir", str(output)]) == 1
    assert "error: not a file of a Redis data dir: " in capsys.readouterr().err
    assert not output.exists()
