"""Restoring Consul: the KV store key by key, or Consul's own archive for a whole cluster;
and the check that an archive is whole (its SHA256SUMS match its members)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyrage import x25519

from backup_pipelines.errors import BackupError, IntegrityError
from backup_pipelines.snapshot.reader import artifact_file, restore_artifact
from backup_pipelines.snapshot.store import SnapshotStore, StoredSnapshot
from backup_pipelines.sources import Log
from backup_pipelines.sources.consul.api import ConsulApi
from backup_pipelines.sources.consul.dump import ARCHIVE_ARTIFACT, KV_ARTIFACT


def load_kv(
    store: SnapshotStore, snapshot: StoredSnapshot, identities: Sequence[x25519.Identity]
) -> list[dict[str, Any]]:
    plain = io.BytesIO()
    restore_artifact(store, snapshot, KV_ARTIFACT, plain, identities)
    try:
        entries = json.loads(plain.getvalue())
        for entry in entries:
            base64.b64decode(entry["value"], validate=True)
            int(entry["flags"])
            str(entry["key"])
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(
            f"{KV_ARTIFACT} of {snapshot.snapshot_id} is not a KV export"
        ) from None
    return entries


def archive_problems(archive: Path) -> list[str]:
    """A Consul snapshot is a gzip'd tar whose SHA256SUMS lists every other member's sha256."""
    digests: dict[str, str] = {}
    sums = b""
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                content = tar.extractfile(member) if member.isfile() else None
                if content is None:
                    continue
                if member.name == "SHA256SUMS":
                    sums = content.read()
                    continue
                digest = hashlib.sha256()
                while chunk := content.read(1 << 20):
                    digest.update(chunk)
                digests[member.name] = digest.hexdigest()
    except (tarfile.TarError, OSError, EOFError) as exc:
        return [f"{ARCHIVE_ARTIFACT} is not a gzip'd tar archive ({exc})"]
    if not sums:
        return [f"{ARCHIVE_ARTIFACT} has no SHA256SUMS"]
    listed = dict(reversed(line.split(maxsplit=1)) for line in sums.decode().splitlines() if line)
    if set(listed) != set(digests):
        return [
            f"{ARCHIVE_ARTIFACT}: SHA256SUMS lists {sorted(listed)}, the archive holds "
            f"{sorted(digests)}"
        ]
    return [
        f"{ARCHIVE_ARTIFACT}: {name} does not match SHA256SUMS"
        for name, digest in digests.items()
        if listed[name] != digest
    ]


def check_snapshot(
    store: SnapshotStore,
    snapshot: StoredSnapshot,
    identities: Sequence[x25519.Identity],
    work_dir: Path,
) -> list[str]:
    """The archive is whole and the KV export parses (with the recorded key count)."""
    try:
        with artifact_file(store, snapshot, ARCHIVE_ARTIFACT, identities, work_dir) as archive:
            problems = archive_problems(archive)
        entries = load_kv(store, snapshot, identities)
    except BackupError as exc:
        return [str(exc)]
    expected = snapshot.manifest.stats.get("kv_keys")
    if expected is not None and expected != len(entries):
        problems.append(f"{KV_ARTIFACT} holds {len(entries)} keys, the manifest says {expected}")
    return problems


def restore_kv(
    store: SnapshotStore,
    snapshot: StoredSnapshot,
    api: ConsulApi,
    *,
    force: bool,
    identities: Sequence[x25519.Identity],
    log: Log,
) -> str:
    """Make the target's KV store equal to the snapshot's: every key, value and flag."""
    entries = load_kv(store, snapshot, identities)
    existing = api.kv_keys()
    if existing and not force:
        raise BackupError(
            f"Consul at {api.where} already holds {len(existing)} keys; add --force to replace "
            "its whole KV store with the snapshot's"
        )
    if existing:
        log(f"deleting {len(existing)} keys from Consul at {api.where} (--force)")
        api.kv_delete_all()
    for number, entry in enumerate(entries, start=1):
        api.kv_put(entry["key"], base64.b64decode(entry["value"]), entry["flags"])
        if number % 1000 == 0:
            log(f"{number} of {len(entries)} keys restored")
    return f"restored consul/{snapshot.snapshot_id} KV into {api.where}: {len(entries)} keys"


def restore_archive(
    store: SnapshotStore,
    snapshot: StoredSnapshot,
    api: ConsulApi,
    *,
    identities: Sequence[x25519.Identity],
    work_dir: Path,
    log: Log,
) -> str:
    """Upload Consul's own archive (PUT /v1/snapshot): the whole cluster state, same version."""
    with artifact_file(store, snapshot, ARCHIVE_ARTIFACT, identities, work_dir) as archive:
        problems = archive_problems(archive)
        if problems:
            raise IntegrityError("; ".join(problems))
        log(f"uploading Consul's snapshot archive to {api.where}")
        with archive.open("rb") as body:
            api.restore_snapshot(body)
    return f"restored consul/{snapshot.snapshot_id} (snapshot archive) into {api.where}"
