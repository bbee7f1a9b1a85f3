"""Consul's HTTP API as backups use it: the snapshot endpoint and the KV store.

The ACL token travels only in the `X-Consul-Token` header, never in a URL,
a log line or a message.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import quote

import requests

from backup_pipelines.errors import (
    BackupError,
    SourceRefused,
    SourceUnavailable,
    connection_cause,
)

TIMEOUT_S = (10, 600)
CHUNK_SIZE = 1 << 20
FILTERED_HEADER = "X-Consul-Results-Filtered-By-ACLs"


class ConsulUnavailable(SourceUnavailable):
    """The agent could not be reached; worth retrying."""


class ConsulRefused(SourceRefused):
    """The agent refused the token or request: retrying will not help."""


@dataclass(frozen=True)
class ConsulApi:
    address: str
    token: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return self.address.rstrip("/")

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"X-Consul-Token": self.token} if self.token else {}
        try:
            response = requests.request(
                method, f"{self.where}/v1/{path}", headers=headers, timeout=TIMEOUT_S, **kwargs
            )
        except requests.RequestException as exc:
            cause = connection_cause(exc) or type(exc).__name__
            raise ConsulUnavailable(f"cannot reach Consul at {self.where}: {cause}") from None
        if response.status_code in (401, 403):
            raise ConsulRefused(
                f"Consul at {self.where} refused {method} /v1/{path.split('?')[0]}: "
                f"{response.text.strip() or response.reason} (check BACKUP_CONSUL_TOKEN)"
            )
        if response.status_code >= 400 and response.status_code != 404:
            raise ConsulRefused(
                f"Consul at {self.where} answered {method} /v1/{path.split('?')[0]} with "
                f"{response.status_code}: {response.text.strip() or response.reason}"
            )
        return response

    @contextmanager
    def snapshot_stream(self) -> Iterator[tuple[Iterator[bytes], int]]:
        """Consul's snapshot archive, chunk by chunk, and the Raft index it was taken at."""
        response = self.request("GET", "snapshot", stream=True)
        try:
            yield response.iter_content(CHUNK_SIZE), int(response.headers.get("X-Consul-Index", 0))
        finally:
            response.close()

    def restore_snapshot(self, archive: BinaryIO) -> None:
        self.request("PUT", "snapshot", data=archive)

    def kv_entries(self) -> list[dict[str, Any]]:
        """Every KV entry; refuses a read the token's ACLs filtered, as it would be incomplete."""
        response = self.request("GET", "kv/?recurse=true")
        if response.headers.get(FILTERED_HEADER, "").lower() == "true":
            raise ConsulRefused(
                f"the token cannot see every key of Consul at {self.where} (the KV read was "
                "filtered by ACLs): a backup with it would be silently incomplete; give "
                "BACKUP_CONSUL_TOKEN read access to the whole KV store"
            )
        return [] if response.status_code == 404 else response.json()

    def kv_keys(self) -> list[str]:
        response = self.request("GET", "kv/?keys=true")
        return [] if response.status_code == 404 else response.json()

    def kv_delete_all(self) -> None:
        self.request("DELETE", "kv/?recurse=true")

    def kv_put(self, key: str, value: bytes, flags: int) -> None:
        self.request("PUT", f"kv/{quote(key)}?flags={flags}", data=value)

    def version(self) -> str:
        """The agent's version, when the token may read it; empty otherwise."""
        try:
            return str(self.request("GET", "agent/self").json()["Config"]["Version"])
        except (BackupError, KeyError, ValueError):
            return ""
