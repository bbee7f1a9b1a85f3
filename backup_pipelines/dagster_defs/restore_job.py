"""`restore_job`: the CLI's restore, launched from the Dagster UI with run config.

Its config is made from the runtime's sources and their kinds' restore
options: `source` (a choice of the sources: kinds, or `<kind>.<target>`),
`snapshot`, `target`, `force`, and each kind's own options, described with
the kinds they apply to. Options that hold secrets are left out: run config
is visible in the UI and stored with the run, so give a target without a
password and let the Dagster process find it (PGPASSFILE or PGPASSWORD in
its environment for PostgreSQL).

Dagster's open-source UI has no login, so a restore launched from it is held
to more than the command's: a directory it writes (a restored file tree, an
output directory, a data directory) must lie inside one of
`BACKUP_RESTORE_ROOTS` (none set: no directory at all), named without `..`,
links resolved; and `force` (which replaces what is there) needs `confirm`
to repeat the target exactly.
"""

import os
from collections.abc import Mapping
from pathlib import Path as PathType
from typing import Any, Literal, get_args

from dagster import (
    Config,
    Failure,
    JobDefinition,
    OpExecutionContext,
    ResourceParam,
    job,
    op,
)
from pydantic import Field, create_model

from backup_pipelines.dagster_defs.caller import in_run
from backup_pipelines.errors import BackupError, ConfigurationError
from backup_pipelines.operations.restore import holding_store, restore
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.store import LATEST
from backup_pipelines.sources.registry import SOURCES
from backup_pipelines.sources.source import SECRET_OPTION, Source

FIXED = ("source", "snapshot", "store", "confirm")


def _shared_option_fields() -> dict[str, Any]:
    """Every kind's restore options as optional config fields, each described with the
    kinds it applies to (`<kind>: ...; <kind>: ...`), secrets left out."""
    described: dict[str, dict[str, str]] = {}
    flags: set[str] = set()
    for source in SOURCES:
        for name, info in source.restore_options.model_fields.items():
            if info.json_schema_extra == SECRET_OPTION:
                continue
            described.setdefault(name, {})[source.kind] = info.description or name
            if info.annotation is bool:
                flags.add(name)
    fields: dict[str, Any] = {}
    for name, by_kind in described.items():
        texts = set(by_kind.values())
        if len(by_kind) == len(SOURCES) and len(texts) == 1:
            description = texts.pop()
        else:
            description = "; ".join(f"{kind}: {text}" for kind, text in by_kind.items())
        if name in flags:
            fields[name] = (bool, Field(False, description=description))
        else:
            fields[name] = (str | None, Field(None, description=description))
    return fields


def restore_config(sources: Mapping[str, type[Source]]) -> type[Config]:
    """The launchpad's form: `source` is one of `sources` (by name, with their kinds). A
    `Literal` of the names, not an `Enum` class: Dagster keeps config types by name, so two
    definitions with other sources (a targets file, a reload) would share one enum."""
    choice = Literal[tuple(sources)]  # type: ignore[valid-type]
    return create_model(
        "RestoreConfig",
        __base__=Config,
        __doc__="Which snapshot to restore where; the fields a source does not take stay unset.",
        source=(choice, Field(description="the source whose snapshot to restore")),
        snapshot=(str, Field(LATEST, description="a snapshot id, or latest")),
        store=(
            str | None,
            Field(
                None,
                description="a store to read (without it: the primary, or the first copy store "
                "that holds the snapshot when the primary cannot be reached)",
            ),
        ),
        confirm=(
            str | None,
            Field(
                None,
                description="with force: the target (or the directory) again, exactly as "
                "typed above (force replaces what it holds)",
            ),
        ),
        **_shared_option_fields(),
    )


def options_of(config: Config) -> dict[str, Any]:
    """The options set in `config` (the restore refuses one another kind takes)."""
    return {
        name: value
        for name, value in config.model_dump().items()
        if name not in FIXED and value not in (None, False)
    }


def refuse_from_the_ui(
    runtime: Runtime, source: str, options: Mapping[str, Any], confirm: str | None
) -> None:
    """`ConfigurationError` for what the UI may not ask of a restore of `source` with
    `options`: a directory outside the restore roots, or `force` without `confirm` repeating
    the target (or the directory) it replaces."""
    kind = runtime.sources[source].restore_options
    places = [str(options["target"])] if "target" in options else []
    for name, value in options.items():
        field = kind.model_fields.get(name)
        if field is not None and PathType in (field.annotation, *get_args(field.annotation)):
            inside_restore_roots(name, str(value), runtime.shared.restore_roots)
            places.append(str(value))
    if options.get("force") and confirm not in places:
        raise ConfigurationError(
            "'force' replaces what the target holds: set 'confirm' to the target exactly as "
            "given above"
        )


def inside_restore_roots(name: str, value: str, roots: list[str]) -> None:
    """A directory the UI names must be absolute, without `..`, and (links resolved) inside
    one of the restore roots."""
    if not roots:
        raise ConfigurationError(
            f"'{name}': a restore from Dagster writes no directory unless BACKUP_RESTORE_ROOTS "
            "names where it may (or restore with the backup-pipelines command)"
        )
    if not os.path.isabs(value) or ".." in value.split(os.sep):
        raise ConfigurationError(f"'{name}': give an absolute directory without '..'")
    resolved = os.path.realpath(value)
    for root in roots:
        real_root = os.path.realpath(root)
        if os.path.commonpath([resolved, real_root]) == real_root:
            return
    raise ConfigurationError(
        f"'{name}': {value} is outside BACKUP_RESTORE_ROOTS ({', '.join(roots)})"
    )


def restore_job(sources: Mapping[str, type[Source]]) -> JobDefinition:
    """`restore_job` over `sources`: each source's name, and its kind."""
    config_class = restore_config(sources)

    @op(name="restore_snapshot")
    def restore_snapshot(
        context: OpExecutionContext,
        config: config_class,  # type: ignore[valid-type]
        runtime: ResourceParam[Runtime],
    ) -> None:
        source = config.source
        caller = in_run(context.run_id, context.log)
        try:
            refuse_from_the_ui(runtime, source, options_of(config), config.confirm)
            if config.store:
                reading = runtime.on_store(config.store)
            else:
                reading = holding_store(runtime, caller, source, config.snapshot)
            restored = restore(
                reading,
                caller,
                source,
                config.snapshot,
                options_of(config),
                spelled=lambda field: f"'{field}'",
            )
        except BackupError as exc:
            named = runtime.sources[source]
            message = named.restore_options.in_config_terms(named.in_own_terms(str(exc)))
            raise Failure(description=message, allow_retries=False) from None
        context.log.info(restored.summary)

    @job(name="restore_job", description="Restore one snapshot into a target.")
    def _restore_job() -> None:
        restore_snapshot()

    return _restore_job
