"""The code location `backup_pipelines.definitions`: its one `Definitions`, `defs`.

The Dagster side of the project lives in `dagster_defs/` (the backups'
location is `dagster_defs/backup_location.py`), over the core it only
adapts. `defs` is built when Dagster loads the location (not at import),
so a wrong `BACKUP_*` value or targets file stops the location from
loading with a message naming the variable or the file's key, rather than
failing the first backup at night; a reload reads them again.
"""

from dagster import Definitions, definitions

from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines.runtime import load_runtime


@definitions
def defs() -> Definitions:
    return build_definitions(load_runtime())
