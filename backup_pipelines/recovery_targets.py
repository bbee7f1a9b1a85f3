"""Where a whole-system recovery puts each source: `recover --into FILE`, and `recover_job`'s
`into` config, which has the same shape (`deploy/recover-into.yaml` is the compose stack's):

    <source>: {<option>: <value>, ...}

Each source is named as `restore` names it (a kind, or `<kind>.<target>`);
its options are `restore`'s flags without the dashes (`target_url`,
`target_dir`) or their field names (`target`). The moment
is `--at`'s, so neither `snapshot` nor `target_time` is an option here. The
file is read like every file of the operator's (`config_files.py`): every
problem at once, a value never echoed, secrets only as `${VAR}`. Run config
is stored with the run and shown in the UI, so there `${VAR}` is not read
and no secret option is taken: the Dagster process's environment gives them,
as for `restore_job`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup_pipelines.config_files import (
    REFERENCE,
    REFUSED,
    InvalidFile,
    is_secret,
    load,
    mapping,
    referenced,
)
from backup_pipelines.errors import ConfigurationError
from backup_pipelines.redaction import secret_parts
from backup_pipelines.sources.source import RestoreOptions, Source
from backup_pipelines.storage.names import shown

SET_BY_THE_RECOVERY = {
    "snapshot": "the snapshot is the newest one complete at the moment (--at)",
    "target_time": "--at sets the moment",
}


class InvalidInto(InvalidFile):
    what = "into file"


@dataclass(frozen=True)
class RecoveryTargets:
    """Each source to recover, in the registry's (the runbook's) order, with its restore
    options by field name; and the secrets they hold, to mask wherever they could appear."""

    options: dict[str, dict[str, Any]]
    secrets: list[str] = field(default_factory=list)


def read_into_file(
    path: Path, sources: Mapping[str, Source], environ: Mapping[str, str]
) -> RecoveryTargets:
    """The into file's targets; `InvalidInto` lists every problem found."""
    problems: list[str] = []
    document = load(path, "--into", InvalidInto)
    targets = recovery_targets(mapping(document, "the file", problems), sources, problems, environ)
    if problems:
        raise InvalidInto(path, problems)
    return targets


def recovery_targets(
    given: Mapping[Any, Any],
    sources: Mapping[str, Source],
    problems: list[str],
    environ: Mapping[str, str] | None,
) -> RecoveryTargets:
    """`given` (source name → its options) checked against each source's restore options;
    `environ` None for run config (no `${VAR}`, no secret option). Problems are added to
    `problems`, each naming the source and the option."""
    if not given:
        problems.append("names no source to recover")
    options: dict[str, dict[str, Any]] = {}
    secrets: list[str] = []
    for name, entry in given.items():
        if name not in sources:
            problems.append(f"{shown(name)} is not a source (the sources: {', '.join(sources)})")
            continue
        values = entry if isinstance(entry, dict) else mapping(entry, name, problems)
        model = sources[name].restore_options
        found = _options(name, model, values, problems, environ)
        if found is not None:
            options[name] = found
            secrets += [part for item in found.items() for part in _secrets_in(model, *item)]
    ordered = {name: options[name] for name in sources if name in options}
    return RecoveryTargets(ordered, secrets)


def spellings(model: type[RestoreOptions]) -> dict[str, str]:
    """Each accepted spelling of an option (its field name; its flag without the dashes,
    `-` as `_`) → its field name."""
    names = {}
    for name in model.model_fields:
        names[name] = name
        names[model.flag(name).removeprefix("--").replace("-", "_")] = name
    return names


def _options(
    source: str,
    model: type[RestoreOptions],
    values: Mapping[Any, Any],
    problems: list[str],
    environ: Mapping[str, str] | None,
) -> dict[str, Any] | None:
    """One source's options by field name, validated as `restore` validates them; None (its
    problems added) when they are not."""
    known = spellings(model)
    found: dict[str, Any] = {}
    before = len(problems)
    for key, raw in values.items():
        where = f"{source}.{key}"
        if key in SET_BY_THE_RECOVERY:
            problems.append(f"{where}: not an option here: {SET_BY_THE_RECOVERY[key]}")
            continue
        if key not in known:
            accepted = ", ".join(sorted(set(known) - set(SET_BY_THE_RECOVERY)))
            problems.append(f"{shown(where)}: not an option of {source} (its options: {accepted})")
            continue
        secret = is_secret(model.model_fields[known[key]].annotation)
        value = _value(where, raw, secret, problems, environ)
        if value is not REFUSED:
            found[known[key]] = value
    if len(problems) > before:
        return None
    try:
        model.parse(found, lambda name: f"{source}.{name}", subject=source)
    except ConfigurationError as exc:
        problems.append(str(exc))
        return None
    return found


def _value(
    where: str, raw: object, secret: bool, problems: list[str], environ: Mapping[str, str] | None
) -> object:
    """The option's value: `${VAR}` read from `environ`; from run config (None), as given,
    and neither a reference nor a secret option."""
    if environ is not None:
        return referenced(raw, where, environ, problems, secret=secret)
    if secret:
        problems.append(
            f"{where}: a secret is not taken from run config (it is stored with the run): "
            "leave it out, and set it in the Dagster process's environment"
        )
        return REFUSED
    if isinstance(raw, str) and REFERENCE.search(raw):
        problems.append(f"{where}: ${{VAR}} is read from the into file only, not run config")
        return REFUSED
    return raw


def _secrets_in(model: type[RestoreOptions], name: str, value: object) -> list[str]:
    """What of an option's value to mask: all of a secret option's, a URL's password."""
    if not isinstance(value, str):
        return []
    parts = secret_parts(value)
    return parts if is_secret(model.model_fields[name].annotation) else parts[1:]
