"""Importing definitions back into a broker, whole or one vhost, and checking a stored export.

An import merges: objects the snapshot holds are created (or must match,
or the broker says why not), objects it does not hold are left alone.
The definitions are small (kilobytes to a few megabytes even for large
brokers), so they are read into memory to filter and post.
"""

from __future__ import annotations

import io
import json
from typing import Any

from backup_pipelines.errors import BackupError, IntegrityError
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.sources.rabbitmq.api import ManagementApi
from backup_pipelines.sources.rabbitmq.definitions import (
    COUNTED,
    counts,
    only_vhost,
    reference_problems,
    structure_problems,
)
from backup_pipelines.sources.rabbitmq.dump import DEFINITIONS_ARTIFACT
from backup_pipelines.sources.source import DrillResult, Log


def load_definitions(reader: SnapshotReader) -> Any:
    """The stored definitions, checked against the manifest, parsed."""
    plain = io.BytesIO()
    reader.restore_artifact(DEFINITIONS_ARTIFACT, plain)
    try:
        return json.loads(plain.getvalue())
    except ValueError:
        raise IntegrityError(
            f"{DEFINITIONS_ARTIFACT} of {reader.snapshot.snapshot_id} is not JSON"
        ) from None


def drill_definitions(reader: SnapshotReader) -> DrillResult:
    """The export parses, has every section and the recorded counts, and every object it
    names is defined in it: all that can be proven without a broker to import into. The
    definitions are small enough to need no scratch file."""
    try:
        definitions = load_definitions(reader)
    except BackupError as exc:
        return DrillResult([str(exc)])
    expected = {k: v for k, v in reader.snapshot.manifest.stats.items() if k in COUNTED}
    problems = structure_problems(definitions, expected)
    if problems:
        return DrillResult(problems)
    return DrillResult(reference_problems(definitions), figures=counts(definitions))


def restore_definitions(
    reader: SnapshotReader, api: ManagementApi, *, vhost: str | None, force: bool, log: Log
) -> str:
    definitions = load_definitions(reader)
    if vhost is not None:
        try:
            definitions = only_vhost(definitions, vhost)
        except KeyError as exc:
            raise BackupError(exc.args[0]) from None
    vhosts = [item["name"] for item in definitions.get("vhosts", [])]
    occupied = {name: api.vhost_objects(name) for name in vhosts}
    occupied = {name: found for name, found in occupied.items() if any(found)}
    if occupied and not force:
        described = ", ".join(
            f"{name!r} ({q} queues, {e} exchanges)" for name, (q, e) in occupied.items()
        )
        raise BackupError(
            f"the broker at {api.where} already has objects in {described}; add --force to "
            "import the snapshot's definitions over them (objects it does not hold are kept)"
        )
    log(f"importing definitions into {api.where}")
    api.post_definitions(json.dumps(definitions).encode())
    figures = ", ".join(f"{number} {section}" for section, number in counts(definitions).items())
    return f"restored {reader.where} into {api.where}: {figures}"
