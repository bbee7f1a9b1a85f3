"""Every backed-up system, in the order they are listed, backed up and pruned.

A new source is a package under `sources/` defining its `Source`, and one
entry here; assets, checks, jobs, schedules, restore options and the
command's flags all come from this list.
"""

from __future__ import annotations

from backup_pipelines.sources.consul import Consul
from backup_pipelines.sources.documents import Documents
from backup_pipelines.sources.postgres import Postgres
from backup_pipelines.sources.rabbitmq import RabbitMQ
from backup_pipelines.sources.redis import Redis
from backup_pipelines.sources.source import Source

SOURCES: tuple[type[Source], ...] = (Postgres, Redis, RabbitMQ, Consul, Documents)
SOURCE_NAMES: tuple[str, ...] = tuple(source.name for source in SOURCES)


def source_class(name: str) -> type[Source]:
    """The source called `name`; `KeyError` for a name that is not one."""
    for source in SOURCES:
        if source.name == name:
            return source
    raise KeyError(name)
