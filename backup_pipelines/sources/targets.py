"""The targets file (`BACKUP_TARGETS_FILE`): several systems of each kind, added without code.

The README's "Several targets per kind" shows one. Each kind maps target
names to the kind's settings (the `BACKUP_<KIND>_*` names, lowercase and
without the prefix), plus `enabled`, `retention` and `site` (where its
backups run: the code location started with that `BACKUP_SITE`). A target is what the
file says, with the contract's defaults for what it leaves out: the
`BACKUP_<KIND>_*` variables never leak into it, so no target silently backs
up the system another one describes. The settings that say where the
system is must be given.

The file is read like every file of the operator's (`config_files.py`):
every problem at once, each naming the file, kind, target and field, a
value never echoed, and secrets only as `${VAR}` references.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from backup_pipelines.config_files import (
    REFUSED,
    InvalidFile,
    dotted,
    is_secret,
    load,
    mapping,
    referenced,
    retention_overrides,
)
from backup_pipelines.redaction import validation_problems
from backup_pipelines.settings import BackupSettings, SourceSettings
from backup_pipelines.sources.registry import KINDS, kind_class
from backup_pipelines.sources.source import Source, Target
from backup_pipelines.storage.names import TARGET_NAME, is_site_name, shown

TARGET_KEYS = ("enabled", "retention", "site")


class InvalidTargets(InvalidFile):
    """What is wrong with the targets file, every problem at once."""

    what = "targets file"


def read_targets(
    file: Path, shared: BackupSettings, environ: Mapping[str, str] = os.environ
) -> dict[str, list[Source]]:
    """The sources the file declares, by kind (a kind it names with no targets has none);
    `InvalidTargets` lists every problem found."""
    problems: list[str] = []
    document = load(file, "BACKUP_TARGETS_FILE", InvalidTargets)
    declared: dict[str, list[Source]] = {}
    for kind, targets in mapping(document, "the file", problems).items():
        if kind not in KINDS:
            problems.append(f"{shown(kind)} is not a kind (the kinds: {', '.join(KINDS)})")
            continue
        declared[kind] = []
        for name, fields in mapping(targets, kind, problems).items():
            if not isinstance(name, str) or TARGET_NAME.fullmatch(name) is None:
                problems.append(
                    f"{kind}: {shown(name)} is not a target name (lowercase letters, digits "
                    "and _, starting with a letter)"
                )
                continue
            if f"{kind}_{name}" in KINDS:
                problems.append(
                    f"{kind}.{name}: its names would be those of the kind {kind}_{name} (its "
                    "job, schedule and asset): choose another target name"
                )
                continue
            source = _target(kind_class(kind), name, file, shared, environ, fields, problems)
            if source is not None:
                declared[kind].append(source)
    if problems:
        raise InvalidTargets(file, problems)
    return declared


def _target(
    source: type[Source],
    name: str,
    file: Path,
    shared: BackupSettings,
    environ: Mapping[str, str],
    fields: object,
    problems: list[str],
) -> Source | None:
    """One target's source, or None with its problems added."""
    where = f"{source.kind}.{name}"
    given = mapping(fields, where, problems)
    model = source.settings_model
    before = len(problems)
    known = [*model.model_fields, *TARGET_KEYS]
    problems += [
        f"{where}: {shown(field)} is not a setting of {source.kind} (its settings: "
        f"{', '.join(known)})"
        for field in given
        if field not in known
    ]
    problems += [
        f"{where}.{field}: is required (it says where the system is)"
        for field in source.address_settings
        if field not in given
    ]
    values = {}
    for field, raw in given.items():
        if field in TARGET_KEYS or field not in model.model_fields:
            continue
        secret = is_secret(model.model_fields[field].annotation)
        value = referenced(raw, f"{where}.{field}", environ, problems, secret=secret)
        if value is not REFUSED:
            values[field] = value
    enabled = given.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(f"{where}.enabled: must be true or false")
    site = given.get("site")
    if site is not None and not is_site_name(site):
        problems.append(
            f"{where}.site: {shown(site)} is not a site name (lowercase letters, digits and _, "
            "starting with a letter)"
        )
    retention = retention_overrides(given.get("retention"), where, problems)
    settings = _settings(model, values, where, problems)
    if len(problems) > before or settings is None or retention is None:
        return None
    return source(settings, shared, Target(name, file, enabled, retention, site))


@cache
def file_only(model: type[SourceSettings]) -> type[SourceSettings]:
    """`model` reading only the values given to it, never the environment, and taking each
    field by its name (`root`, not the variable it is read from)."""

    class FromTargetsFile(model):  # type: ignore[valid-type, misc]
        model_config = SettingsConfigDict(validate_by_name=True)

        @classmethod
        def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, **_
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings,)

    FromTargetsFile.__name__ = FromTargetsFile.__qualname__ = model.__name__
    return FromTargetsFile


def _settings(
    model: type[SourceSettings], values: dict[str, Any], where: str, problems: list[str]
) -> SourceSettings | None:
    try:
        return file_only(model)(**values)
    except ValidationError as exc:
        problems += validation_problems(exc, lambda loc: f"{where}.{_field_of(model, loc)}")
        return None


def _field_of(model: type[SourceSettings], loc: tuple[str | int, ...]) -> str:
    """The field an error is about, by its name in the file (pydantic may give the alias)."""
    for name, info in model.model_fields.items():
        if loc and loc[0] in (name, *getattr(info.validation_alias, "choices", ())):
            return ".".join([name, *map(str, loc[1:])])
    return dotted(loc)
