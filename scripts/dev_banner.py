"""What `make dev` is about to touch, said before it starts: the systems each source backs up
(from the same BACKUP_* settings the code location reads), where snapshots go, and that
nothing runs by itself until turned on in the UI."""

from __future__ import annotations

import logging
import os
import sys

from pydantic import SecretStr

from backup_pipelines.errors import ConfigurationError
from backup_pipelines.redaction import mask_url
from backup_pipelines.runtime import load_runtime


def shown(value: object) -> str:
    text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return mask_url(text)


def main() -> int:
    logging.getLogger("backup_pipelines.stores").setLevel(logging.ERROR)  # said below
    try:
        runtime = load_runtime()
    except ConfigurationError as exc:
        print(f"make dev: {exc}", file=sys.stderr)
        return 2
    print("make dev: the UI on http://127.0.0.1:3000, Dagster's own data in .dagster_home/.")
    print("Materialize (or a schedule once turned on) backs up:")
    for source in runtime.backed_up:
        where = ", ".join(
            f"{source.setting(name)}={shown(getattr(source.settings, name))}"
            for name in source.address_settings
        )
        skipped = source.not_configured()
        print(f"  {source.name:<14} {f'not configured: {skipped}' if skipped else where}")
    print(f"into {runtime.store.describe()}.")
    broker = shown(runtime.shared.rabbitmq_url)
    print(f"Events go to, and backup requests are read from, the broker {broker}.")
    if os.environ.get("BACKUP_START_STOPPED", "").lower() in ("1", "true", "yes"):
        print(
            "Schedules and the sensors that launch backups (backup.requests on the broker, "
            "changes) start STOPPED: turn them on in the UI (Automation) once the BACKUP_* "
            "variables name your own systems. Ctrl-C stops everything."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
