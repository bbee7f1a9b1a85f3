"""Restoring Consul: the KV store key by key, or Consul's own archive for a whole cluster;
and the drill that proves an archive whole (its SHA256SUMS match its members)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

from backup_pipelines.errors import BackupError, IntegrityError
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.sources.consul.api import ConsulApi
from backup_pipelines.sources.consul.dump import ARCHIVE_ARTIFACT, KV_ARTIFACT
from backup_pipelines.sources.source import DrillResult, Log
from backup_pipelines.storage.streams import CountingReader, SizedReader

META_MEMBER = "meta.json"
SMALL_MEMBER_LIMIT = 64 << 10
"""meta.json and SHA256SUMS are a few hundred bytes: a tampered archive's are read no further."""


def load_kv(reader: SnapshotReader) -> list[dict[str, Any]]:
    plain = io.BytesIO()
    reader.restore_artifact(KV_ARTIFACT, plain)
    try:
        entries = json.loads(plain.getvalue())
        for entry in entries:
            base64.b64decode(entry["value"], validate=True)
            int(entry["flags"])
            str(entry["key"])
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(
            f"{KV_ARTIFACT} of {reader.snapshot.snapshot_id} is not a KV export"
        ) from None
    return entries


@dataclass(frozen=True)
class Archive:
    """What a Consul snapshot archive holds: each member's sha256, its SHA256SUMS, meta.json."""

    digests: dict[str, str]
    sums: bytes
    meta: dict[str, Any] | None
    size: int = 0
    """The archive's bytes, as Consul wants them announced (Content-Length)."""


def read_archive(reader: SnapshotReader) -> Archive:
    """Stream through the gzip'd tar once, from the store; `IntegrityError` when it is not one."""
    with reader.open_plain(ARCHIVE_ARTIFACT) as stream:
        counted = CountingReader(stream)
        archive = _read_tar(counted)
        counted.drain()
    return replace(archive, size=counted.size)


def _read_tar(stream: BinaryIO) -> Archive:
    digests: dict[str, str] = {}
    sums, meta = b"", None
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as tar:
            for member in tar:
                content = tar.extractfile(member) if member.isfile() else None
                if content is None:
                    continue
                if member.name == "SHA256SUMS":
                    sums = content.read(SMALL_MEMBER_LIMIT)
                    continue
                digest = hashlib.sha256()
                if member.name == META_MEMBER:
                    data = content.read(SMALL_MEMBER_LIMIT)
                    meta = _parsed(data)
                    digest.update(data)
                while chunk := content.read(1 << 20):
                    digest.update(chunk)
                digests[member.name] = digest.hexdigest()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise IntegrityError(f"{ARCHIVE_ARTIFACT} is not a gzip'd tar archive ({exc})") from None
    return Archive(digests, sums, meta)


def _parsed(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def archive_problems(archive: Archive) -> list[str]:
    """A Consul snapshot is a gzip'd tar whose SHA256SUMS lists every other member's sha256,
    and whose meta.json says which Raft index it was taken at."""
    if not archive.sums:
        return [f"{ARCHIVE_ARTIFACT} has no SHA256SUMS"]
    lines = archive.sums.decode(errors="replace").splitlines()
    listed = dict(reversed(line.split(maxsplit=1)) for line in lines if " " in line)
    if set(listed) != set(archive.digests):
        return [
            f"{ARCHIVE_ARTIFACT}: SHA256SUMS lists {sorted(listed)}, the archive holds "
            f"{sorted(archive.digests)}"
        ]
    problems = [
        f"{ARCHIVE_ARTIFACT}: {name} does not match SHA256SUMS"
        for name, digest in archive.digests.items()
        if listed[name] != digest
    ]
    if archive.meta is None:
        problems.append(f"{ARCHIVE_ARTIFACT} has no readable {META_MEMBER}")
    return problems


def drill_snapshot(reader: SnapshotReader) -> DrillResult:
    """The archive is whole and the KV export parses with the recorded key count: all that
    can be proven without an agent of the same version to restore into."""
    try:
        archive = read_archive(reader)
        entries = load_kv(reader)
    except BackupError as exc:
        return DrillResult([str(exc)])
    stats = reader.snapshot.manifest.stats
    problems = archive_problems(archive)
    expected = stats.get("kv_keys")
    if expected is not None and expected != len(entries):
        problems.append(f"{KV_ARTIFACT} holds {len(entries)} keys, the manifest says {expected}")
    index, recorded = (archive.meta or {}).get("Index"), stats.get("snapshot_index")
    warnings = []
    if None not in (index, recorded) and index != recorded:
        warnings.append(f"meta.json names Raft index {index}, the backup recorded {recorded}")
    figures = {"kv_keys": len(entries), "archive_members": sorted(archive.digests)}
    return DrillResult(problems, {**figures, "raft_index": index}, warnings)


def restore_kv(reader: SnapshotReader, api: ConsulApi, *, force: bool, log: Log) -> str:
    """Make the target's KV store equal to the snapshot's: every key, value and flag."""
    entries = load_kv(reader)
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
    return f"restored {reader.where} KV into {api.where}: {len(entries)} keys"


def restore_archive(reader: SnapshotReader, api: ConsulApi, log: Log) -> str:
    """Upload Consul's own archive (PUT /v1/snapshot): the whole cluster state, same version."""
    archive = read_archive(reader)  # checked whole before anything reaches the target
    if problems := archive_problems(archive):
        raise IntegrityError("; ".join(problems))
    log(f"uploading Consul's snapshot archive to {api.where}")
    with reader.open_plain(ARCHIVE_ARTIFACT) as stream:
        api.restore_snapshot(SizedReader(stream, archive.size))
    return f"restored {reader.where} (snapshot archive) into {api.where}"
