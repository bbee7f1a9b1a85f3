"""Taking a Consul snapshot: Consul's own archive, and a KV export that restores key by key.

The archive (`GET /v1/snapshot`, a gzip'd tar of the Raft state) restores a
whole cluster of the same version; the KV export is plain JSON (key,
flags, base64 value) that restores into any Consul, or by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.sources.consul.api import ConsulApi

ARCHIVE_ARTIFACT = "consul.snap"
KV_ARTIFACT = "kv.json"
GZIP_MAGIC = b"\x1f\x8b"


def kv_export(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consul's KV entries reduced to what restores them: key, flags, base64 value."""
    return sorted(
        (
            {"key": e["Key"], "flags": int(e.get("Flags") or 0), "value": e.get("Value") or ""}
            for e in entries
        ),
        key=lambda entry: entry["key"],
    )


def dump_consul(staged: StagedSnapshot, api: ConsulApi, log: Callable[[str], None] = print) -> None:
    """Stage Consul's snapshot archive and the KV export; record figures in stats."""
    log(f"taking a snapshot of Consul at {api.where}")
    entries = kv_export(api.kv_entries())  # first: an ACL-filtered read must stop us early
    with api.snapshot_stream() as (chunks, index):
        staged.add_stream(ARCHIVE_ARTIFACT, chunks, expect_prefix=GZIP_MAGIC)
    staged.add_stream(KV_ARTIFACT, [json.dumps(entries, indent=1).encode()], expect_prefix=b"[")
    staged.stats.update(
        kv_keys=len(entries), snapshot_index=index, consul_version=api.version(), server=api.where
    )
