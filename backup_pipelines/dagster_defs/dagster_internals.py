"""The Dagster names this project needs that Dagster does not export publicly, in one place,
so an upgrade that moves them breaks here and nowhere else."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster._core.storage.tags import BACKFILL_ID_TAG as BACKFILL_ID_TAG
from dagster._core.storage.tags import RUN_KEY_TAG as RUN_KEY_TAG
from dagster._core.storage.tags import SCHEDULE_NAME_TAG as SCHEDULE_NAME_TAG
from dagster._core.storage.tags import SENSOR_NAME_TAG as SENSOR_NAME_TAG

if TYPE_CHECKING:  # the type define_asset_job returns
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition as UnresolvedAssetJobDefinition,
    )
