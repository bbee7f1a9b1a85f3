"""The snapshot pipeline and both stores: round trips, encryption, failures, corruption."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from pyrage import x25519

from backup_pipelines.errors import IntegrityError, ProducerFailed, StoreError
from backup_pipelines.processes import ToolFailed, ToolMissing
from backup_pipelines.retention.policy import RetentionRules
from backup_pipelines.retention.pruning import apply_retention
from backup_pipelines.snapshot.manifest import MANIFEST_NAME, Manifest, utc_now
from backup_pipelines.snapshot.reader import restore_artifact, verify_snapshot
from backup_pipelines.snapshot.staging import stage
from backup_pipelines.storage.s3 import MAX_PARTS, part_size_for
from backup_pipelines_tests.conftest import (
    RUN_ID,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    commit_snapshot,
    flip_byte,
    make_local_store,
    make_s3_store,
    object_key,
)
from backup_pipelines_tests.tcp_proxy import CuttingProxy


def read_plain(store, snapshot, name, identities=()) -> bytes:
    out = io.BytesIO()
    restore_artifact(store, snapshot, name, out, identities)
    return out.getvalue()


def test_round_trip_writes_contract_manifest_last(store, staging_dir):
    data = b"\x00\xffbinary and unicode \xc3\xa9" * 10_000
    snapshot = commit_snapshot(
        store, staging_dir, {"crm.dump": data, "globals.sql": b"CREATE ROLE a;"}
    )

    assert read_plain(store, snapshot, "crm.dump") == data
    assert read_plain(store, snapshot, "globals.sql") == b"CREATE ROLE a;"
    manifest = json.loads(snapshot.manifest.to_bytes())
    assert manifest["format"] == "backup-pipelines-snapshot"
    assert manifest["version"] == 1
    assert manifest["snapshot_id"].endswith("-5f0e9a1c")
    assert manifest["started_at"].endswith("Z") and manifest["finished_at"].endswith("Z")
    assert manifest["compression"] == "zstd" and manifest["encryption"] is None
    assert [f["name"] for f in manifest["files"]] == ["crm.dump.zst", "globals.sql.zst"]
    assert manifest["stats"] == {"artifacts": 2}
    assert store.list_snapshots("postgres") == [snapshot]
    assert store.find("postgres", "latest") == snapshot
    assert verify_snapshot(store, snapshot) == []


@pytest.mark.slow
def test_large_stream_round_trips_bit_exact_in_bounded_memory(store, tmp_path, request):
    """400 MiB through zstd into the store and back, in a child process we can measure."""
    size_mb = 400
    command = [
        sys.executable,
        "-m",
        "backup_pipelines_tests.memory_probe",
        "--root",
        str(tmp_path / "artifacts"),
        "--size-mb",
        str(size_mb),
    ]
    if "s3" in request.node.callspec.id:
        command += [
            "--s3-endpoint",
            store.backend.endpoint_url,
            "--s3-bucket",
            store.backend.bucket,
            "--s3-keys",
            S3_ACCESS_KEY,
            S3_SECRET_KEY,
        ]
    result = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)

    assert result["plain_bytes"] == size_mb << 20
    assert result["restored_sha256"] == result["expected_sha256"]
    assert result["stored_bytes"] < result["plain_bytes"]
    assert result["peak_rss_mb"] < size_mb / 2, result
    [snapshot] = store.list_snapshots("postgres")
    assert verify_snapshot(store, snapshot) == []


def test_encrypted_snapshot_needs_its_identity(store, staging_dir, tmp_path):
    identity = x25519.Identity.generate()
    data = b"customer records " * 50_000
    snapshot = commit_snapshot(
        store, staging_dir, {"crm.dump": data}, recipients=[identity.to_public()]
    )

    assert snapshot.manifest.encryption == "age"
    assert [f.name for f in snapshot.manifest.files] == ["crm.dump.zst.age"]
    with store.open_file("postgres", snapshot.snapshot_id, "crm.dump.zst.age") as stored:
        assert stored.read(21) == b"age-encryption.org/v1"
    with pytest.raises(IntegrityError, match="encrypted"):
        read_plain(store, snapshot, "crm.dump")
    with pytest.raises(IntegrityError, match="cannot decrypt"):
        read_plain(store, snapshot, "crm.dump", [x25519.Identity.generate()])
    assert read_plain(store, snapshot, "crm.dump", [identity]) == data


def test_producer_failing_halfway_leaves_nothing(store, staging_dir):
    with pytest.raises(ToolFailed, match=r"dump of crm failed \(exit code 3\): disk on fire"):
        with stage(staging_dir, "postgres", RUN_ID) as staged:
            staged.add_stream("globals.sql", [b"CREATE ROLE a;"])
            staged.add_command(
                "crm.dump",
                ["sh", "-c", "head -c 3000000 /dev/urandom; echo disk on fire >&2; exit 3"],
                label="dump of crm",
            )
    assert store.list_snapshots("postgres") == []
    assert list((staging_dir / "postgres").iterdir()) == []


def test_iterator_failing_halfway_keeps_its_own_error(store, staging_dir):
    def chunks():
        yield b"x" * 100_000
        raise ConnectionResetError("server closed the connection")

    for recipients in ((), [x25519.Identity.generate().to_public()]):
        with pytest.raises(ConnectionResetError, match="server closed"):
            with stage(staging_dir, "postgres", RUN_ID, recipients=recipients) as staged:
                staged.add_stream("kv.json", chunks())
    assert store.list_snapshots("postgres") == []
    assert list((staging_dir / "postgres").iterdir()) == []


def test_empty_or_wrong_format_output_is_not_a_snapshot(staging_dir):
    with pytest.raises(ProducerFailed, match="produced no data"):
        with stage(staging_dir, "postgres", RUN_ID) as staged:
            staged.add_command("crm.dump", ["true"], label="pg_dump of crm")
    with pytest.raises(ProducerFailed, match="expected format"):
        with stage(staging_dir, "postgres", RUN_ID) as staged:
            staged.add_stream("crm.dump", [b"<html>proxy error</html>"], expect_prefix=b"PGDMP")
    with pytest.raises(ToolMissing, match="'no-such-dump-tool' is not installed"):
        with stage(staging_dir, "postgres", RUN_ID) as staged:
            staged.add_command("crm.dump", ["no-such-dump-tool"], label="dump")
    assert list((staging_dir / "postgres").iterdir()) == []


def test_secrets_in_producer_errors_are_masked(staging_dir):
    with pytest.raises(ToolFailed) as failure:
        with stage(staging_dir, "postgres", RUN_ID) as staged:
            staged.add_command(
                "crm.dump",
                ["sh", "-c", "echo 'auth failed for s3cr3t-pw' >&2; exit 1"],
                label="pg_dump of crm",
                secrets=["s3cr3t-pw"],
            )
    assert "s3cr3t-pw" not in str(failure.value)
    assert "auth failed for ***" in str(failure.value)


def test_flipped_byte_is_found_by_verify_and_refused_by_restore(store, staging_dir):
    data = bytes(range(256)) * 4000
    snapshot = commit_snapshot(store, staging_dir, {"crm.dump": data})
    flip_byte(store, snapshot.snapshot_id, "crm.dump.zst", offset=100)

    problems = verify_snapshot(store, snapshot)
    assert problems == ["crm.dump.zst: sha256 does not match the manifest"]
    with pytest.raises(IntegrityError, match="do not match the manifest"):
        read_plain(store, snapshot, "crm.dump")


def test_a_committed_local_snapshot_is_read_only(tmp_path, staging_dir):
    store = make_local_store(tmp_path / "artifacts")
    snapshot = commit_snapshot(store, staging_dir, {"crm.dump": b"rows", "globals.sql": b"roles"})
    directory = tmp_path / "artifacts" / "postgres" / snapshot.snapshot_id
    files = sorted(directory.iterdir())
    assert [path.name for path in files] == ["crm.dump.zst", "globals.sql.zst", MANIFEST_NAME]
    assert all(path.stat().st_mode & 0o222 == 0 for path in files)
    store.delete("postgres", snapshot.snapshot_id)  # retention still removes it
    assert not directory.exists()


def test_directory_without_manifest_is_invisible(store, staging_dir):
    snapshot = commit_snapshot(store, staging_dir, {"crm.dump": b"data"})
    store.backend.delete(object_key("postgres", snapshot.snapshot_id, MANIFEST_NAME))
    assert store.list_snapshots("postgres") == []
    assert [a.snapshot_id for a in store.survey("postgres").attempts] == [snapshot.snapshot_id]
    with pytest.raises(Exception, match="no complete postgres snapshot"):
        store.find("postgres", snapshot.snapshot_id)


def test_delete_removes_everything(store, staging_dir):
    first = commit_snapshot(store, staging_dir, {"a.dump": b"1", "b.dump": b"2"})
    second = commit_snapshot(store, staging_dir, {"a.dump": b"3"}, run_id="99999999-other-run")
    store.delete("postgres", first.snapshot_id)
    assert [s.snapshot_id for s in store.list_snapshots("postgres")] == [second.snapshot_id]
    with pytest.raises(Exception, match=r"a\.dump\.zst"):
        with store.open_file("postgres", first.snapshot_id, "a.dump.zst") as stored:
            stored.read()


def test_commit_never_replaces_an_existing_snapshot(store, staging_dir):
    first = commit_snapshot(store, staging_dir, {"a.dump": b"original"})
    with stage(staging_dir, "postgres", RUN_ID) as staged:
        staged.snapshot_id = first.snapshot_id
        staged.add_stream("a.dump", [b"impostor"])
    with pytest.raises(Exception, match="already exists"):
        store.commit(staged)
    assert read_plain(store, store.find("postgres", first.snapshot_id), "a.dump") == b"original"


def test_part_size_keeps_uploads_under_the_part_cap():
    for size in (0, 1, 8 << 20, 80 << 30, 5 << 40):
        part = part_size_for(size)
        assert part >= 8 << 20
        assert -(-size // part) < MAX_PARTS


def test_manifest_rejects_other_formats():
    good = {
        "source": "redis",
        "snapshot_id": "20261122T030000Z-1a2b3c4d",
        "started_at": "2026-11-22T03:00:00Z",
        "finished_at": "2026-11-22T03:00:42Z",
        "run_id": "r",
        "files": [],
    }
    parsed = Manifest.model_validate(good)
    assert (parsed.finished_at - parsed.started_at).total_seconds() == 42
    assert parsed.started_at.tzinfo is not None
    with pytest.raises(ValueError, match="version 2"):
        Manifest.model_validate({**good, "version": 2})


def test_s3_unreachable_mid_upload_fails_clearly_and_leaves_no_snapshot(
    s3_endpoint, s3_bucket, staging_dir, sources
):
    proxy = CuttingProxy(int(s3_endpoint.rsplit(":", 1)[1]), cut_after=20 << 20)
    through_proxy = make_s3_store(proxy.url, s3_bucket, max_attempts=2)
    with stage(staging_dir, "postgres", RUN_ID) as staged:
        staged.add_stream("crm.dump", (os.urandom(1 << 20) for _ in range(64)))

    with pytest.raises(StoreError) as failure:
        through_proxy.commit(staged)
    staged.discard()

    message = str(failure.value)
    assert proxy.cut.is_set()
    assert message.startswith(
        f"could not store postgres snapshot {staged.snapshot_id}: S3 upload of "
        f"backups/postgres/{staged.snapshot_id}/crm.dump.zst failed at "
    )
    assert f"s3://{s3_bucket}/backups/ at {proxy.url}" in message
    assert S3_SECRET_KEY not in message and S3_ACCESS_KEY not in message
    direct = make_s3_store(s3_endpoint, s3_bucket)
    assert direct.list_snapshots("postgres") == []
    assert not staging_dir.joinpath("postgres", staged.snapshot_id).exists()
    # The abort could not reach S3 either: the open upload is an interrupted attempt that
    # prune aborts once it is a day old, and then nothing of it is left.
    assert [a.snapshot_id for a in direct.survey("postgres").attempts] == [staged.snapshot_id]
    client = direct.backend.client
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    later = utc_now() + timedelta(hours=25)  # (moto dates every upload in 2010 anyway)
    apply_retention(direct, sources, RetentionRules(), dry_run=False, now=later, log=lambda _: None)
    assert client.list_objects_v2(Bucket=s3_bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert direct.survey("postgres").attempts == []
