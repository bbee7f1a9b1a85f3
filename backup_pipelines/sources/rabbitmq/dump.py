"""Exporting the broker's definitions: vhosts, users (with password hashes), permissions,
parameters, policies, queues, exchanges and bindings. Messages are not part of them.

The export is streamed into the pipeline and, at the same time, spooled
into the staging directory so its figures come from exactly the bytes
stored; the spool holds password hashes and is removed at once.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from backup_pipelines.errors import ProducerFailed
from backup_pipelines.snapshot.staging import StagedSnapshot
from backup_pipelines.sources.rabbitmq.api import ManagementApi
from backup_pipelines.sources.rabbitmq.definitions import broker_version, counts

DEFINITIONS_ARTIFACT = "definitions.json"
SPOOL_IN_MEMORY = 8 << 20


def _tee(chunks: Iterable[bytes], copy: BinaryIO) -> Iterator[bytes]:
    for chunk in chunks:
        copy.write(chunk)
        yield chunk


def dump_definitions(
    staged: StagedSnapshot, api: ManagementApi, log: Callable[[str], None] = print
) -> None:
    """Stage the definitions; record their counts and the broker version in stats."""
    log(f"exporting definitions from {api.where}")
    with (
        tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY, dir=staged.directory) as spool,
        api.stream("definitions") as chunks,
    ):
        staged.add_stream(DEFINITIONS_ARTIFACT, _tee(chunks, spool), expect_prefix=b"{")
        spool.seek(0)
        try:
            definitions = json.load(spool)
        except ValueError:
            raise ProducerFailed(f"the definitions from {api.where} are not valid JSON") from None
    staged.stats.update(counts(definitions))
    staged.stats["broker_version"] = broker_version(definitions)
    staged.stats["server"] = api.where
