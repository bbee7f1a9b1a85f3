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
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import materialize_asset, median_of, print_table, timed

SERVER = "postgresql://postgres@127.0.0.1:5432"
BIN = Path(sys.executable).parent


def admin(statement: sql.Composable) -> None:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as connection:
        connection.execute(statement)


def drop(database: str) -> None:
    admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def recreate(database: str) -> None:
    drop(database)
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

        def pg_dump_run() -> tuple[float, int, int]:
            seconds, peak, _ = timed(
                ["pg_dump", "-Fc", "-f", str(plain_dump), f"{SERVER}/{database}"]
            )
            return seconds, plain_dump.stat().st_size, peak

        def server_limit_run() -> tuple[float, int, int]:
            seconds, peak, _ = timed(
                ["pg_dump", "-Fc", "-Z0", f"{SERVER}/{database}"], stdout_path=Path(os.devnull)
            )
            return seconds, 0, peak

        def restore_run() -> tuple[float, int, int]:
            drop("bench_restored_asset")
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
            (
                "postgres_backup asset",
                *median_of(args.repeat, lambda: materialize_asset("postgres_backup", env)),
            ),
            ("pg_dump -Fc", *median_of(args.repeat, pg_dump_run)),
            ("pg_dump -Fc -Z0 >/dev/null", *median_of(args.repeat, server_limit_run)),
            ("backup-pipelines restore", *median_of(args.repeat, restore_run)),
            ("pg_restore -j2 (local file)", *median_of(args.repeat, pg_restore_run)),
        ]
        drop("bench_restored_asset")
        drop("bench_restored_plain")

    with psycopg.connect(f"{SERVER}/postgres") as connection:
        size = connection.execute("SELECT pg_database_size(%s)", [database]).fetchone()[0]
    print_table(
        f"{database}: {size / 2**20:.0f} MiB on the server, {os.cpu_count()} cores, "
        f"median of {args.repeat}",
        rows,
    )
    print(
        "asset time is its duration_s metadata (staging start to manifest written); "
        "restore time includes the CLI's start-up, fetch, sha256 check and decompression"
    )


if __name__ == "__main__":
    main()
