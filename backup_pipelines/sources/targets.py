"""The targets file (`BACKUP_TARGETS_FILE`): several systems of each kind, added without code.

The README's "Several targets per kind" shows one. Each kind maps target
names to the kind's settings (the `BACKUP_<KIND>_*` names, lowercase and
without the prefix), plus `enabled` and `retention`. A target is what the
file says, with the contract's defaults for what it leaves out: the
`BACKUP_<KIND>_*` variables never leak into it, so no target silently backs
up the system another one describes. The settings that say where the
system is must be given.

The file is untrusted input in an operator's hands: every problem is
reported at once, each naming the file, kind, target and field, and a
value is never echoed. Secrets appear only as `${VAR}` references to the
environment (the file is often committed, or readable by more people than
the keys); a literal one is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from backup_pipelines.errors import ConfigurationError
from backup_pipelines.redaction import secret_parts, validation_problems
from backup_pipelines.settings import BackupSettings, RetentionOverrides, SourceSettings
from backup_pipelines.sources.registry import KINDS, kind_class
from backup_pipelines.sources.source import Source, Target
from backup_pipelines.storage.names import TARGET_NAME, shown

MAX_FILE_BYTES = 1 << 20
REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
TARGET_KEYS = ("enabled", "retention")


class InvalidTargets(ConfigurationError):
    """What is wrong with the targets file, every problem at once."""

    def __init__(self, file: Path, problems: list[str]):
        self.problems = [f"{file}: {problem}" for problem in problems]
        super().__init__("invalid targets file: " + "; ".join(self.problems))


class _Pairs(list):
    """A YAML mapping as its (key, value) pairs in order, so a key given twice is seen."""


class _PairsLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; this keeps them all."""


def _construct_pairs(loader: _PairsLoader, node: yaml.MappingNode) -> _Pairs:
    loader.flatten_mapping(node)
    return _Pairs(
        (loader.construct_object(key, deep=True), loader.construct_object(value, deep=True))
        for key, value in node.value
    )


_PairsLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_pairs)


def read_targets(
    file: Path, shared: BackupSettings, environ: Mapping[str, str] = os.environ
) -> dict[str, list[Source]]:
    """The sources the file declares, by kind (a kind it names with no targets has none);
    `InvalidTargets` lists every problem found."""
    problems: list[str] = []
    document = _load(file)
    declared: dict[str, list[Source]] = {}
    for kind, targets in _mapping(document, "the file", problems).items():
        if kind not in KINDS:
            problems.append(f"{shown(kind)} is not a kind (the kinds: {', '.join(KINDS)})")
            continue
        declared[kind] = []
        for name, fields in _mapping(targets, kind, problems).items():
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


def _load(file: Path) -> object:
    try:
        with file.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(
            f"BACKUP_TARGETS_FILE names {file}, which cannot be read ({exc.strerror})"
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidTargets(file, [f"larger than {MAX_FILE_BYTES} bytes"])
    try:
        return yaml.load(raw, Loader=_PairsLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise InvalidTargets(file, [f"{line}not YAML ({problem})"]) from None


def _mapping(value: object, where: str, problems: list[str]) -> dict[Any, Any]:
    """A YAML mapping as a dict; a key given twice, or no mapping at all, is a problem."""
    if value is None:
        return {}
    if not isinstance(value, _Pairs):
        problems.append(f"{where}: must be a mapping")
        return {}
    found: dict[Any, Any] = {}
    for key, item in value:
        if not isinstance(key, str | int | bool | float):
            problems.append(f"{where}: a key is not a name")
        elif key in found:
            problems.append(f"{where}: {shown(key)} is declared twice")
        else:
            found[key] = item
    return found


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
    given = _mapping(fields, where, problems)
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
        if literal := _literal_secret(raw, secret=_is_secret(model, field)):
            problems.append(
                f"{where}.{field}: holds {literal}: write it as ${{VARIABLE}} and set "
                "that variable in the environment"
            )
            continue
        values[field] = _substituted(raw, f"{where}.{field}", environ, problems)
    enabled = given.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(f"{where}.enabled: must be true or false")
    retention = _retention(given.get("retention"), where, problems)
    settings = _settings(model, values, where, problems)
    if len(problems) > before or settings is None or retention is None:
        return None
    return source(settings, shared, Target(name, file, enabled, retention))


def _is_secret(model: type[SourceSettings], field: str) -> bool:
    annotation = model.model_fields[field].annotation
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


def _literal_secret(raw: object, *, secret: bool) -> str | None:
    """What in a setting's value is written out rather than referenced, or None.

    A password inside a URL or libpq DSN must be a reference in any setting
    (the URL itself is not a secret). A secret setting that is not a URL or
    DSN must be one reference as a whole.
    """
    if not isinstance(raw, str) or REFERENCE.fullmatch(raw):
        return None
    password = _password_in(raw)
    if password is not None:
        return None if REFERENCE.fullmatch(password) else "a literal password"
    if secret and "://" not in raw and "=" not in raw:
        return "a literal secret"
    return None


def _password_in(text: str) -> str | None:
    """The password a URL (`scheme://user:pw@host`) or keyword DSN (`password=pw`) holds."""
    passwords = secret_parts(text)[1:]
    return passwords[0] if passwords else None


def _substituted(raw: object, where: str, environ: Mapping[str, str], problems: list[str]):
    """`raw` with each `${VAR}` replaced by the variable's value; an unset one is a problem."""
    if isinstance(raw, list):
        return [_substituted(item, where, environ, problems) for item in raw]
    if not isinstance(raw, str):
        return raw

    def value_of(reference: re.Match[str]) -> str:
        variable = reference.group(1)
        if variable not in environ:
            problems.append(f"{where}: ${{{variable}}} is not set in the environment")
            return ""
        return environ[variable]

    return REFERENCE.sub(value_of, raw)


def _retention(raw: object, where: str, problems: list[str]) -> RetentionOverrides | None:
    given = _mapping(raw, f"{where}.retention", problems)
    try:
        return RetentionOverrides.model_validate(given)
    except ValidationError as exc:
        problems += validation_problems(exc, lambda loc: f"{where}.retention.{_dotted(loc)}")
        return None


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
    return _dotted(loc)


def _dotted(loc: tuple[str | int, ...]) -> str:
    return ".".join(map(str, loc)) or "?"
