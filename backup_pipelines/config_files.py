"""The operator's YAML files (`BACKUP_TARGETS_FILE`, `BACKUP_STORES_FILE`), read the same way.

Each is untrusted input in an operator's hands: read bounded, parsed as
plain data only, a key given twice seen (PyYAML would keep the last one
silently), every problem reported at once naming the file and the place
in it, and a value never echoed. Secrets appear only as `${VAR}` references
to the environment (such a file is often committed, or readable by more
people than the keys); a literal one is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr, ValidationError

from backup_pipelines.errors import ConfigurationError
from backup_pipelines.redaction import Location, secret_parts, validation_problems
from backup_pipelines.settings import RetentionOverrides
from backup_pipelines.storage.names import shown

MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32
"""Far deeper than any targets or stores file needs."""
REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
REFUSED = object()
"""What `referenced` gives for a literal secret: the field is left out, the problem said."""


class InvalidFile(ConfigurationError):
    """What is wrong with one of the operator's files, every problem at once."""

    what = "file"

    def __init__(self, file: Path, problems: list[str]):
        self.problems = [f"{file}: {problem}" for problem in problems]
        super().__init__(f"invalid {self.what}: " + "; ".join(self.problems))


class _Pairs(list):
    """A YAML mapping as its (key, value) pairs in order, so a key given twice is seen."""


class _PairsLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; this keeps them all. Aliases are
    refused (a few lines of `*a` that repeat each other expand to gigabytes: the billion
    laughs), and so is nesting deeper than `MAX_DEPTH` (PyYAML recurses once per level)."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed here", self.peek_event().start_mark
            )
        if self.depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _construct_pairs(loader: _PairsLoader, node: yaml.MappingNode) -> _Pairs:
    loader.flatten_mapping(node)
    return _Pairs(
        (loader.construct_object(key, deep=True), loader.construct_object(value, deep=True))
        for key, value in node.value
    )


_PairsLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_pairs)


def load(file: Path, variable: str, invalid: type[InvalidFile]) -> object:
    """The file's YAML document; `variable` names the setting that pointed at it."""
    try:
        with file.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(
            f"{variable} names {file}, which cannot be read ({exc.strerror})"
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise invalid(file, [f"larger than {MAX_FILE_BYTES} bytes"])
    try:
        return yaml.load(raw, Loader=_PairsLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise invalid(file, [f"{line}not YAML ({problem})"]) from None


def mapping(value: object, where: str, problems: list[str]) -> dict[Any, Any]:
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


def is_secret(annotation: object) -> bool:
    """Whether a field of this type holds a secret (`SecretStr`, or one of a union)."""
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


def referenced(
    raw: object,
    where: str,
    environ: Mapping[str, str],
    problems: list[str],
    *,
    secret: bool,
) -> object:
    """A field's value with each `${VAR}` replaced by the variable's value; an unset
    variable is a problem, and a literal secret too (`REFUSED`: leave the field out)."""
    if literal := _literal_secret(raw, secret=secret):
        problems.append(
            f"{where}: holds {literal}: write it as ${{VARIABLE}} and set that variable in "
            "the environment"
        )
        return REFUSED
    return _substituted(raw, where, environ, problems)


def _literal_secret(raw: object, *, secret: bool) -> str | None:
    """What in a setting's value is written out rather than referenced, or None.

    A password inside a URL or libpq DSN must be a reference in any setting
    (the URL itself is not a secret). A secret setting that is not a URL or
    DSN must be one reference as a whole.
    """
    if not isinstance(raw, str) or REFERENCE.fullmatch(raw):
        return None
    passwords = secret_parts(raw)[1:]
    if passwords:
        return None if REFERENCE.fullmatch(passwords[0]) else "a literal password"
    if secret and "://" not in raw and "=" not in raw:
        return "a literal secret"
    return None


def _substituted(raw: object, where: str, environ: Mapping[str, str], problems: list[str]):
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


def retention_overrides(raw: object, where: str, problems: list[str]) -> RetentionOverrides | None:
    """The `retention:` a target or a store gives itself, or None with its problems added."""
    given = mapping(raw, f"{where}.retention", problems)
    try:
        return RetentionOverrides.model_validate(given)
    except ValidationError as exc:
        problems += validation_problems(exc, lambda loc: f"{where}.retention.{dotted(loc)}")
        return None


def dotted(loc: Location) -> str:
    """A validation error's place, as the file spells it (`retention.daily`)."""
    return ".".join(map(str, loc)) or "?"
