"""What a copy store's own retention dropped, kept in that store: a copy does not send back
a snapshot the store pruned while the primary still holds it (a copy store may keep less
than the primary, and would otherwise receive and drop it again at every copy).

One small record per source, `.copies/dropped/<source>.json`, replaced at each prune of the
store; ids older than the primary's oldest snapshot are forgotten (nothing could send them
again). Read back it is untrusted: bounded, and every id checked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from backup_pipelines.storage import Backend
from backup_pipelines.storage.layout import dropped_key
from backup_pipelines.storage.names import is_snapshot_id

logger = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1 << 20


class DroppedSnapshots:
    """The record of what the store `backend` dropped by its own rules."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def read(self, source: str) -> set[str]:
        fetched = self.backend.get(dropped_key(source), MAX_RECORD_BYTES + 1, replaced=True)
        if fetched is None:
            return set()
        try:
            ids = json.loads(fetched.data[:MAX_RECORD_BYTES])
        except ValueError:
            ids = None
        if not isinstance(ids, list):
            logger.warning("ignoring %s: not a list of snapshot ids", dropped_key(source))
            return set()
        return {found for found in ids if is_snapshot_id(found)}

    def unsent(self, source: str, primary: Iterable[str], held: Iterable[str]) -> list[str]:
        """Which of the primary's snapshots (ids) the store should be sent: those it neither
        holds nor dropped, oldest first (ids sort in time order)."""
        return sorted(set(primary) - set(held) - self.read(source))

    def add(self, source: str, dropped: Iterable[str], oldest_wanted: str | None) -> None:
        """Add `dropped`, and forget what is older than `oldest_wanted` (the primary's oldest
        snapshot of the source: nothing older can be sent again; None: the primary holds
        none)."""
        ids = self.read(source) | set(dropped)
        ids = {found for found in ids if oldest_wanted is not None and found >= oldest_wanted}
        self.backend.put_bytes(dropped_key(source), json.dumps(sorted(ids)).encode(), replace=True)
