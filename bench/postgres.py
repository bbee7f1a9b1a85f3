"""The postgres_backup asset and its restore, side by side with plain pg_dump and pg_restore.

    .venv/bin/python bench/postgres.py [--scale 30] [--repeat 3]

Builds a `pgbench -i -s SCALE` database once (kept for later runs), then in
one run, each in its own process: the asset's snapshot (materialized with
the real definitions, local store, no checks), plain `pg_dump -Fc` to a
file, `pg_dump -Fc -Z0 > /dev/null` (what the server alone can deliver), the
`backup-pipelines restore` of the snapshot, and plain `pg_restore -j2` of
the `pg_dump -Fc` file. Prints the median of each, output sizes and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

SERVER = "postgresql://postgres@127.0.0.1:5432"
BIN = Path(sys.executable).parent

ASSET_CHILD = """
import json, time
from dagster import DagsterInstance, materialize
from backup_pipelines.assets import postgres_backup
from backup_pipelines.definitions import build_definitions
from backup_pipelines.settings import load_settings
defs = build_definitions(load_settings())
started = time.monotonic()
result = materialize([postgres_backup], resources=defs.resources,
                     instance=DagsterInstance.ephemeral())
wall = time.monotonic() - started
[event] = result.asset_materializations_for_node("postgres_backup")
print(json.dumps({"duration_s": event.metadata["duration_s"].value, "wall_s": wall,
                  "size_bytes": event.metadata["size_bytes"].value}))
"""


def admin(statement: sql.Composable) -> None:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as connection:
        connection.execute(statement)


def recreate(database: str) -> None:
    admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
    admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def ensure_pgbench(database: str, scale: int) -> None:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [database]
        ).fetchone()
    if not exists:
        print(f"building {database} with pgbench -i -s {scale} (once)")
        recreate(database)
        subprocess.run(
            ["pgbench", "-i", "-q", "-s", str(scale), f"{SERVER}/{database}"], check=True
        )


def timed(
    command: list[str], env: dict[str, str] | None = None, shell_stdout: str = ""
) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB, via GNU time so the fork from Python does not count), stdout."""
    os.sync()
    with tempfile.NamedTemporaryFile("r") as report:
        argv = ["/usr/bin/time", "-f", "%M", "-o", report.name, *command]
        if shell_stdout:
            argv = ["sh", "-c", " ".join(f"'{a}'" for a in argv) + f" > {shell_stdout}"]
        started = time.monotonic()
        result = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
        seconds = time.monotonic() - started
        peak = int(report.read().split()[-1])
    return seconds, peak, result.stdout


def median_of(repeat: int, run: Callable[[], tuple[float, int, int]]) -> tuple[float, int, int]:
    runs = [run() for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), runs[-1][1], max(r[2] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    database = f"bench_pgbench_s{args.scale}"
    ensure_pgbench(database, args.scale)

    with tempfile.TemporaryDirectory(prefix="bench-postgres-") as scratch:
        scratch_dir = Path(scratch)
        env = {
            **os.environ,
            "BACKUP_ARTIFACTS_DIR": str(scratch_dir / "artifacts"),
            "BACKUP_POSTGRES_BACKUP_DSN": f"{SERVER}/postgres",
            "BACKUP_POSTGRES_DATABASES": database,
            "DAGSTER_HOME": str(scratch_dir),
        }
        plain_dump = scratch_dir / "plain.dump"

        def asset_run() -> tuple[float, int, int]:
            _, peak, out = timed([sys.executable, "-c", ASSET_CHILD], env=env)
            figures = json.loads(out.strip().splitlines()[-1])
            return figures["duration_s"], figures["size_bytes"], peak

        def pg_dump_run() -> tuple[float, int, int]:
            seconds, peak, _ = timed(
                ["pg_dump", "-Fc", "-f", str(plain_dump), f"{SERVER}/{database}"]
            )
            return seconds, plain_dump.stat().st_size, peak

        def server_limit_run() -> tuple[float, int, int]:
            seconds, peak, _ = timed(
                ["pg_dump", "-Fc", "-Z0", f"{SERVER}/{database}"], shell_stdout="/dev/null"
            )
            return seconds, 0, peak

        def restore_run() -> tuple[float, int, int]:
            admin(sql.SQL("DROP DATABASE IF EXISTS bench_restored_asset WITH (FORCE)"))
            seconds, peak, _ = timed(
                [
                    str(BIN / "backup-pipelines"),
                    "restore",
                    "postgres",
                    "--database",
                    database,
                    "--target-dsn",
                    f"{SERVER}/bench_restored_asset",
                ],
                env=env,
            )
            return seconds, 0, peak

        def pg_restore_run() -> tuple[float, int, int]:
            recreate("bench_restored_plain")
            seconds, peak, _ = timed(
                ["pg_restore", "-j2", "-d", f"{SERVER}/bench_restored_plain", str(plain_dump)]
            )
            return seconds, 0, peak

        rows = [
            ("postgres_backup asset", *median_of(args.repeat, asset_run)),
            ("pg_dump -Fc", *median_of(args.repeat, pg_dump_run)),
            ("pg_dump -Fc -Z0 >/dev/null", *median_of(args.repeat, server_limit_run)),
            ("backup-pipelines restore", *median_of(args.repeat, restore_run)),
            ("pg_restore -j2 (local file)", *median_of(args.repeat, pg_restore_run)),
        ]
        admin(sql.SQL("DROP DATABASE IF EXISTS bench_restored_asset WITH (FORCE)"))
        admin(sql.SQL("DROP DATABASE IF EXISTS bench_restored_plain WITH (FORCE)"))

    with psycopg.connect(f"{SERVER}/postgres") as connection:
        size = connection.execute("SELECT pg_database_size(%s)", [database]).fetchone()[0]
    print(
        f"{database}: {size / 2**20:.0f} MiB on the server, {os.cpu_count()} cores, "
        f"median of {args.repeat}"
    )
    print(f"{'':<30} {'seconds':>8} {'output MiB':>11} {'peak RSS MiB':>13}")
    for label, seconds, output, peak in rows:
        shown = f"{output / 2**20:>11.1f}" if output else f"{'':>11}"
        print(f"{label:<30} {seconds:>8.2f} {shown} {peak / 1024:>13.1f}")
    print(
        "asset time is its duration_s metadata (staging start to manifest written); "
        "restore time includes the CLI's start-up, fetch, sha256 check and decompression"
    )


if __name__ == "__main__":
    main()
