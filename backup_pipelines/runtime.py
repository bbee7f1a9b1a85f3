"""The composition root: the environment read once, and everything built from it.

The `backup-pipelines` command and the Dagster definitions both start here:
`load_settings()` reads every `BACKUP_*` variable (the shared ones and each
registered kind's) and the targets file when there is one, and `Runtime`
adds the sources, bound to their settings, to the services the shared
settings build (`services.py`: the store, staging, the audit trail, the
events). Nothing below this module reads the environment, and nothing is
read at import.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backup_pipelines.services import Services, read_store_specs, split_urls
from backup_pipelines.settings import (
    BackupSettings,
    InvalidSettings,
    SourceSettings,
    env_names,
    read_settings,
    secret_values,
)
from backup_pipelines.sources.registry import SOURCES
from backup_pipelines.sources.source import Source
from backup_pipelines.sources.targets import InvalidTargets, read_targets
from backup_pipelines.stores import PRIMARY, InvalidStores, StoreSpec


@dataclass(frozen=True)
class Settings:
    """The shared settings, every source bound to its own (in the registry's order), and the
    stores (the primary first)."""

    shared: BackupSettings
    declared: tuple[Source, ...]
    stores: tuple[StoreSpec, ...]

    def secret_values(self) -> list[str]:
        """Every secret set anywhere, to mask in any message."""
        values = secret_values(self.shared)
        for source in self.declared:
            values += source.secrets()
        for store in self.stores:
            values += store.secrets()
        return values

    @property
    def sources(self) -> dict[str, SourceSettings]:
        """Each source's settings, by the source's name."""
        return {source.name: source.settings for source in self.declared}

    @property
    def kinds(self) -> dict[str, type[Source]]:
        """Each source's kind, by the source's name."""
        return {source.name: type(source) for source in self.declared}


def load_settings() -> Settings:
    """Read the environment, the targets file and the stores file; every bad value is
    reported at once, each naming its variable, or its place in its file.

    A kind the targets file names has the file's targets; any other kind has
    its one source from its `BACKUP_<KIND>_*` variables, named like the kind.
    """
    problems: list[str] = []
    try:
        shared = read_settings(BackupSettings)
    except InvalidSettings as exc:
        problems += exc.problems
        shared = None
    declared = {}
    if shared is not None and shared.targets_file is not None:
        try:
            declared = read_targets(shared.targets_file, shared)
        except InvalidTargets as exc:
            problems += exc.problems
    stores: list[StoreSpec] = []
    if shared is not None:
        try:
            stores = read_store_specs(shared)
        except InvalidStores as exc:
            problems += exc.problems
    sources: list[Source] = []
    for kind in SOURCES:
        if kind.kind in declared:
            sources += declared[kind.kind] + before_the_targets_file(kind, shared)
            continue
        try:
            settings = read_settings(kind.settings_model)
        except InvalidSettings as exc:
            problems += exc.problems
            continue
        if shared is not None:
            sources.append(kind(settings, shared))
    problems += unknown_variables(os.environ)
    if shared is not None and shared.site is not None and not problems:
        problems += unknown_site(shared.site, sources)
    if problems or shared is None:
        raise InvalidSettings(problems)
    return Settings(shared, tuple(sources), tuple(stores))


def before_the_targets_file(kind: type[Source], shared: BackupSettings | None) -> list[Source]:
    """The kind under its own name, turned off, beside the targets the file gives it: the
    snapshots it took before it moved into the targets file (`<kind>/` in the store) stay
    listed, restorable and pruned under that name, and nothing backs it up any more. Its
    `BACKUP_<KIND>_*` variables, which the file replaced, are read leniently: a drill or a
    restore needs none of them, so a bad one costs only this source."""
    if shared is None:
        return []
    try:
        settings = read_settings(kind.settings_model)
    except InvalidSettings:
        return []
    return [kind(settings.model_copy(update={"enabled": False}), shared)]


def unknown_site(site: str, sources: Sequence[Source]) -> list[str]:
    """`BACKUP_SITE` must be a site the targets file gives a target: a location of a site
    no target names would back up nothing, silently."""
    sites = sorted({source.site for source in sources if source.site is not None})
    if site in sites:
        return []
    named = f"its sites: {', '.join(sites)}" if sites else "it gives no target a site"
    return [f"BACKUP_SITE: no target of the targets file is at site {site!r} ({named})"]


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A `BACKUP_*` variable no setting reads is a misspelling (`BACKUP_POSTGRES_DSN`), whose
    value would be silently ignored for a default: each is named with the nearest that exist."""
    known = env_names(BackupSettings)
    for kind in SOURCES:
        known |= env_names(kind.settings_model)
    problems = []
    for name in sorted(n for n in environ if n.startswith("BACKUP_") and n not in known):
        nearest = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(nearest)}?)" if nearest else ""
        problems.append(f"{name}: not a setting{hint}")
    return problems


class Runtime(Services):
    """The services, and the sources bound to their settings, built from `settings`;
    `typed_secrets` (what an operator typed on the command line) are masked with the
    configured ones."""

    def __init__(
        self, settings: Settings, typed_secrets: Sequence[str] = (), store_name: str = PRIMARY
    ):
        secrets = [*settings.secret_values(), *typed_secrets]
        super().__init__(settings.shared, secrets, settings.stores, store_name)
        self.settings = settings
        self.typed_secrets = tuple(typed_secrets)
        self.sources: dict[str, Source] = {source.name: source for source in settings.declared}

    def on_store(self, name: str) -> Runtime:
        """The same runtime, reading (and recording in) the store `name`."""
        return Runtime(self.settings, self.typed_secrets, name)

    def notify_urls(self) -> dict[str, tuple[str, ...]]:
        return {name: split_urls(s.settings.notify_urls) for name, s in self.sources.items()}

    @property
    def enabled(self) -> list[Source]:
        """Every source some code location backs up, at any site (what monitoring watches)."""
        return [source for source in self.sources.values() if source.enabled]

    @property
    def site(self) -> str | None:
        return self.shared.site

    @property
    def here(self) -> dict[str, Source]:
        """The sources of this location's site (turned off or not): what it may restore and
        recover where it runs."""
        return {name: s for name, s in self.sources.items() if s.site == self.site}

    @property
    def backed_up(self) -> list[Source]:
        """The sources this code location backs up: those of its site (`BACKUP_SITE`; none:
        the sources no target's `site` places elsewhere), but the targets turned off."""
        return [source for source in self.here.values() if source.enabled]


def load_runtime() -> Runtime:
    return Runtime(load_settings())
