"""Every kind of backed-up system, in the order they are listed, backed up and pruned.

A new kind is a package under `sources/` defining its `Source`, and one
entry here; assets, checks, jobs, schedules, restore options and the
command's flags all come from this list.
"""

from __future__ import annotations

from collections.abc import Iterable

from backup_pipelines.sources.consul import Consul
from backup_pipelines.sources.documents import Documents
from backup_pipelines.sources.postgres import Postgres
from backup_pipelines.sources.postgres.base import PostgresBase
from backup_pipelines.sources.rabbitmq import RabbitMQ
from backup_pipelines.sources.redis import Redis
from backup_pipelines.sources.source import ContinuousArchive, Source

SOURCES: tuple[type[Source], ...] = (Postgres, PostgresBase, Redis, RabbitMQ, Consul, Documents)
KINDS: tuple[str, ...] = tuple(source.kind for source in SOURCES)


def kind_class(kind: str) -> type[Source]:
    """The source class of `kind`; `KeyError` for a word that is not a kind."""
    for source in SOURCES:
        if source.kind == kind:
            return source
    raise KeyError(kind)


def archiving(sources: Iterable[Source]) -> list[tuple[Source, ContinuousArchive]]:
    """The sources among `sources` that archive between their snapshots, with their archive."""
    return [(s, archive) for s in sources if (archive := s.continuous_archive) is not None]
