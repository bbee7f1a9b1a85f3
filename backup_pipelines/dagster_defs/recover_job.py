"""`recover_job`: the command's `recover`, launched from the Dagster UI with the into file as
run config.

    at: "2026-12-03T10:00:00Z"
    plan: true
    into:
      <source>: {<option>: <value>, ...}   # as in the into file

Its first step, `plan_recovery`, shows the plan (each source's snapshot,
recovery point, distance from the moment, size and expected duration) as
its output's metadata and in the log; with `plan: true` the run stops
there, a dry run to read before launching the recovery itself. The second,
`recover_to_the_moment`, restores in the runbook's order. Held to the same
rules as `restore_job` (the UI has no login): no secret and no `${VAR}` in
run config, directories only inside `BACKUP_RESTORE_ROOTS`, and `force`
only with `confirm` repeating the target, per source.
"""

from datetime import datetime
from typing import Any

from dagster import (
    Config,
    ConfigMapping,
    Failure,
    In,
    JobDefinition,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    ResourceParam,
    job,
    op,
)
from pydantic import Field

from backup_pipelines.dagster_defs.caller import in_run
from backup_pipelines.dagster_defs.restore_job import refuse_from_the_ui
from backup_pipelines.errors import BackupError, ConfigurationError
from backup_pipelines.operations.recover import Recovery, plan_recovery, recover
from backup_pipelines.recovery_targets import recovery_targets
from backup_pipelines.runtime import Runtime
from backup_pipelines.snapshot.manifest import format_utc, typed_moment

PLAN_STEP, RECOVER_STEP = "plan_recovery", "recover_to_the_moment"


class RecoverConfig(Config):
    """The into file, and the command's flags."""

    at: str = Field(description="the moment to recover to (ISO-8601; UTC when no zone is given)")
    into: dict[str, dict[str, Any]] = Field(
        description="each source to recover (as restore names it: a kind, or <kind>.<target>) "
        "with the options restore takes, as in the into file (target_dsn, target_url, "
        "target_dir, force, ...); with force, 'confirm' repeats the target"
    )
    plan: bool = Field(False, description="only plan: show what would be restored; restore nothing")
    store: str | None = Field(
        None,
        description="a store to read (without it: the primary, or the first copy store that "
        "holds a source's snapshots when the primary cannot be reached)",
    )


def planned(
    context: OpExecutionContext, config: RecoverConfig, runtime: Runtime
) -> tuple[Recovery, Runtime]:
    """The plan of the recovery `config` asks for, and the runtime that masks the secrets its
    targets hold (a URL's password); `Failure` (not retried) naming what is wrong."""
    try:
        at = moment(config.at)
        problems: list[str] = []
        into = {name: dict(options) for name, options in config.into.items()}
        confirms = {name: options.pop("confirm", None) for name, options in into.items()}
        targets = recovery_targets(into, runtime.here, problems, environ=None)
        if problems:
            raise ConfigurationError("'into': " + "; ".join(problems))
        for name, options in targets.options.items():
            refuse_from_the_ui(runtime, name, options, confirms[name])
        if config.store:
            runtime.on_store(config.store)  # an unknown store is named before anything else
        runtime = Runtime(runtime.settings, [*runtime.typed_secrets, *targets.secrets])
        caller = in_run(context.run_id, context.log)
        recovery = plan_recovery(
            runtime, caller, at, targets.options, config.store, sources=runtime.here
        )
        return recovery, runtime
    except BackupError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None


def moment(text: str) -> datetime:
    try:
        return typed_moment(text)
    except ValueError as exc:
        raise ConfigurationError(f"'at': {exc}") from None


def plan_table(recovery: Recovery) -> str:
    """The plan (or its outcome) as a Markdown table, one row per source."""
    rows = [
        "| source | outcome | snapshot | recovery point | before the moment | size | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for step in recovery.steps:
        shown = step.shown(recovery.at)
        if shown is None or step.point is None:
            rows.append(f"| {step.source} | {step.outcome} | {step.reason or ''} | | | | |")
            continue
        rows.append(
            f"| {step.source} | {step.outcome} | {shown.snapshot} | {shown.point} "
            f"({step.point.how}) | {shown.before} | {shown.size} | {shown.time} |"
        )
    return "\n".join(rows)


def recover_job() -> JobDefinition:
    @op(name=PLAN_STEP, out=Out(Nothing))
    def plan_step(
        context: OpExecutionContext, config: RecoverConfig, runtime: ResourceParam[Runtime]
    ) -> None:
        recovery, _ = planned(context, config, runtime)
        table = plan_table(recovery)
        context.log.info(f"recovery to {format_utc(recovery.at)}:\n{table}")
        context.add_output_metadata({"plan": MetadataValue.md(table)})
        if (stopped := recovery.failed) is not None:
            raise Failure(
                description=f"{stopped.source} cannot be recovered to {format_utc(recovery.at)}: "
                f"{stopped.reason}; nothing was restored",
                allow_retries=False,
            )

    @op(name=RECOVER_STEP, ins={"planned": In(Nothing)}, out=Out(Nothing))
    def recover_step(
        context: OpExecutionContext, config: RecoverConfig, runtime: ResourceParam[Runtime]
    ) -> None:
        if config.plan:
            context.log.info("plan: true, so nothing was restored; launch again without it")
            return
        recovery, masking = planned(context, config, runtime)
        recover(masking, in_run(context.run_id, context.log), recovery)
        context.add_output_metadata({"recovery": MetadataValue.md(plan_table(recovery))})
        if (stopped := recovery.failed) is not None:
            untouched = [step.source for step in recovery.due if step.outcome == "not started"]
            raise Failure(
                description=f"{stopped.source} failed: {stopped.reason}"
                + (f"; not restored: {', '.join(untouched)}" if untouched else ""),
                allow_retries=False,
            )
        for step in recovery.due:
            context.log.info(f"{step.source}: {step.summary}")

    def both_steps(config: dict[str, Any]) -> dict[str, Any]:
        """The job's config (the into file's shape) is each step's."""
        given = {name: value for name, value in config.items() if value is not None}
        return {"ops": {PLAN_STEP: {"config": given}, RECOVER_STEP: {"config": given}}}

    @job(
        name="recover_job",
        description="Recover every source named in 'into' to one moment, in the runbook's "
        "order (plan: true shows the plan alone).",
        config=ConfigMapping(both_steps, config_schema=RecoverConfig.to_config_schema()),
    )
    def _recover_job() -> None:
        recover_step(plan_step())

    return _recover_job
