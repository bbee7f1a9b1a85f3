"""The RabbitMQ management HTTP API, with errors that say what to fix.

Definitions carry every user's password hash, so nothing here logs a
response body, and the admin password is only ever in the HTTP session.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import quote

import requests

from backup_pipelines.errors import SourceRefused, SourceUnavailable, connection_cause
from backup_pipelines.events.broker import OWN_EXCHANGES, is_own_queue
from backup_pipelines.redaction import mask_url

TIMEOUT_S = (10, 300)
CHUNK_SIZE = 1 << 20


class RabbitUnavailable(SourceUnavailable):
    """The management API could not be reached; worth retrying."""


class RabbitRefused(SourceRefused):
    """The broker refused our credentials or request: retrying will not help."""


@dataclass(frozen=True)
class ManagementApi:
    url: str
    user: str
    password: str = field(repr=False)

    @property
    def where(self) -> str:
        return mask_url(self.url.rstrip("/"))

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = requests.request(
                method,
                f"{self.url.rstrip('/')}/api/{path}",
                auth=(self.user, self.password),
                timeout=TIMEOUT_S,
                **kwargs,
            )
        except requests.RequestException as exc:
            raise RabbitUnavailable(
                f"cannot reach the RabbitMQ management API at {self.where}: "
                f"{connection_cause(exc) or type(exc).__name__} (is the rabbitmq_management plugin "
                "enabled?)"
            ) from None
        if response.status_code == 401:
            raise RabbitRefused(
                f"the RabbitMQ management API at {self.where} rejected user {self.user!r}; check "
                "BACKUP_RABBITMQ_ADMIN_USER and BACKUP_RABBITMQ_ADMIN_PASSWORD"
            )
        if response.status_code >= 400:
            raise RabbitRefused(
                f"the RabbitMQ management API at {self.where} answered {method} /api/{path} "
                f"with {response.status_code}: {broker_reason(response)}"
            )
        return response

    def get(self, path: str) -> Any:
        return self._request("GET", path).json()

    @contextmanager
    def stream(self, path: str) -> Iterator[Iterator[bytes]]:
        """The body of a GET, chunk by chunk, never read into memory whole."""
        response = self._request("GET", path, stream=True)
        try:
            yield response.iter_content(CHUNK_SIZE)
        finally:
            response.close()

    def post_definitions(self, body: BinaryIO | bytes) -> None:
        self._request(
            "POST", "definitions", data=body, headers={"Content-Type": "application/json"}
        )

    def vhost_objects(self, vhost: str) -> tuple[int, int]:
        """Queues and exchanges in `vhost` other than the broker's defaults and this project's
        own (its events and requests live on the broker it backs up); (0, 0) when it does not
        exist."""
        names = {vhost["name"] for vhost in self.get("vhosts")}
        if vhost not in names:
            return 0, 0
        encoded = quote(vhost, safe="")
        queues = [q for q in self.get(f"queues/{encoded}") if not is_own_queue(q["name"])]
        exchanges = [
            exchange
            for exchange in self.get(f"exchanges/{encoded}")
            if exchange["name"]
            and not exchange["name"].startswith("amq.")
            and exchange["name"] not in OWN_EXCHANGES
        ]
        return len(queues), len(exchanges)


def broker_reason(response: requests.Response) -> str:
    """The broker's own words for an error ({"error": ..., "reason": ...}), else the status text."""
    try:
        body = response.json()
    except ValueError:
        return response.reason or "no reason given"
    if isinstance(body, dict):
        return str(body.get("reason") or body.get("error") or body)
    return str(body)
