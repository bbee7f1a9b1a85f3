"""An operation's `Caller` inside Dagster: the run's id in its events and audit record, its
lines in the log of the run or sensor tick (the UI shows them)."""

import logging

from dagster import DagsterLogManager

from backup_pipelines.operations.caller import Caller


def in_run(run_id: str, log: DagsterLogManager | logging.Logger) -> Caller:
    return Caller("dagster", run_id=run_id, log=log.info, warn=log.warning)
