"""The code location `backup_pipelines.verification`: the verification plane, its one
`Definitions`, `defs` (built in `dagster_defs/verification_location.py`).

Its own location, so it can run where the age identity lives, with
read-only store credentials, while the backup hosts hold only the
recipients.
"""

from dagster import Definitions, definitions

from backup_pipelines.dagster_defs.verification_location import build_verification
from backup_pipelines.runtime import load_runtime


@definitions
def defs() -> Definitions:
    return build_verification(load_runtime())
