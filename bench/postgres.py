"""The PostgreSQL backup, its drill and its restore, side by side with plain pg_dump and pg_restore.

    .venv/bin/python bench/postgres.py [--megabytes 400] [--repeat 3]

Builds a CRM-like database once (kept for later runs): contacts, deals and
activities with names, e-mail addresses, phone numbers, amounts, dates, JSON
profiles and free text drawn from a skewed vocabulary, so it compresses
about as real CRM data does (pgbench's blank filler compresses about 50:1
and flatters every tool). Then, in one run, each in its own process:

- `pg_dump -Fc` to a file, and `pg_dump -Fc -Z0 | zstd -T0 -3` to a file;
- the snapshot time (the asset's `duration_s`: staging start to manifest);
- the whole `dagster asset materialize --select postgres_backup` command, as
  an operator or cron runs it (start-up, the backup and its integrity check);
- `backup-pipelines drill postgres` (a throwaway cluster, restore, compare);
- `backup-pipelines restore` of the snapshot and `pg_restore -j2` of the
  `pg_dump -Fc` file.

Prints the median of each, its ratio to `pg_dump -Fc`, output sizes and peak RSS,
and the restore's ratio to `pg_restore -j2`. Run it at two sizes (`--megabytes
100`, `400`) to see peak RSS stay flat as the data grows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import materialize_asset, median_of, timed

SERVER = "postgresql://postgres@127.0.0.1:5432"
BIN = Path(sys.executable).parent
ROWS_PER_MB = {"contacts": 440, "deals": 770, "activities": 1990}
"""Rows of each table per megabyte of database, measured on this generator."""

SCHEMA = """
CREATE TABLE vocabulary AS
    SELECT n AS rank, translate(substr(md5(n::text), 1, 3 + n % 9), '0123456789', 'etaoinshrd')
        AS word
    FROM generate_series(1, 8000) AS n;
CREATE FUNCTION prose(vocabulary text[], words int) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT string_agg(vocabulary[1 + floor(7999 * power(random(), 3))::int], ' ')
    FROM generate_series(1, words)  -- a skewed pick: frequent words are frequent
$$;
CREATE TABLE contacts (
    id bigserial PRIMARY KEY, first_name text, last_name text, email text, phone text,
    company text, city text, created_at timestamptz, score int, profile jsonb, notes text
);
CREATE TABLE deals (
    id bigserial PRIMARY KEY, contact_id bigint REFERENCES contacts(id), stage text,
    amount numeric(12, 2), currency text, closed_on date, description text
);
CREATE TABLE activities (
    id bigserial PRIMARY KEY, contact_id bigint REFERENCES contacts(id), kind text,
    happened_at timestamptz, subject text, body text
);
"""
FILL = """
WITH v AS (SELECT array_agg(word ORDER BY rank) AS words FROM vocabulary)
INSERT INTO contacts (first_name, last_name, email, phone, company, city, created_at, score,
                      profile, notes)
SELECT initcap(v.words[1 + n % 8000]), initcap(v.words[1 + (n * 7) % 8000]),
       v.words[1 + n % 8000] || '.' || v.words[1 + (n * 7) % 8000] || n || '@example.org',
       '+49 ' || (100 + floor(random() * 900))::int || ' ' || floor(random() * 10000000)::int,
       initcap(v.words[1 + (n * 13) % 8000]) || ' GmbH',
       (ARRAY['Berlin', 'Hamburg', 'Munich', 'Cologne', 'Leipzig'])[1 + n % 5],
       timestamptz '2020-01-01' + random() * interval '6 years', floor(random() * 100)::int,
       jsonb_build_object('segment', v.words[1 + n % 50], 'newsletter', n % 3 = 0,
                          'visits', n % 97),
       prose(v.words, 5 + n % 30)
FROM generate_series(1, {contacts}) AS n, v;
WITH v AS (SELECT array_agg(word ORDER BY rank) AS words FROM vocabulary)
INSERT INTO deals (contact_id, stage, amount, currency, closed_on, description)
SELECT 1 + floor(random() * {contacts})::int,
       (ARRAY['lead', 'qualified', 'proposal', 'won', 'lost'])[1 + n % 5],
       round((random() * 50000)::numeric, 2), (ARRAY['EUR', 'USD', 'GBP'])[1 + n % 3],
       date '2021-01-01' + n % 1800, prose(v.words, 3 + n % 15)
FROM generate_series(1, {deals}) AS n, v;
WITH v AS (SELECT array_agg(word ORDER BY rank) AS words FROM vocabulary)
INSERT INTO activities (contact_id, kind, happened_at, subject, body)
SELECT 1 + floor(random() * {contacts})::int,
       (ARRAY['call', 'email', 'meeting', 'note'])[1 + n % 4],
       timestamptz '2021-01-01' + random() * interval '5 years', prose(v.words, 4),
       prose(v.words, 10 + n % 40)
FROM generate_series(1, {activities}) AS n, v;
ANALYZE;
"""


def admin(statement: sql.Composable) -> None:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as connection:
        connection.execute(statement)


def drop(database: str) -> None:
    admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def recreate(database: str) -> None:
    drop(database)
    admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def database_size(database: str) -> int:
    with psycopg.connect(f"{SERVER}/postgres") as connection:
        return connection.execute("SELECT pg_database_size(%s)", [database]).fetchone()[0]


def ensure_crm(database: str, megabytes: int) -> None:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [database]
        ).fetchone()
    if exists:
        return
    print(f"building {database}, a CRM-like database of about {megabytes} MB (once)")
    recreate(database)
    rows = {table: per_mb * megabytes for table, per_mb in ROWS_PER_MB.items()}
    with psycopg.connect(f"{SERVER}/{database}", autocommit=True) as connection:
        connection.execute(SCHEMA)
        connection.execute(FILL.format(**rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    database = f"bench_crm_{args.megabytes}mb"
    ensure_crm(database, args.megabytes)

    with tempfile.TemporaryDirectory(prefix="bench-postgres-") as scratch:
        scratch_dir = Path(scratch)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")},
            "BACKUP_ARTIFACTS_DIR": str(scratch_dir / "artifacts"),
            "BACKUP_POSTGRES_BACKUP_DSN": f"{SERVER}/postgres",
            "BACKUP_POSTGRES_DATABASES": database,
            "DAGSTER_HOME": str(scratch_dir),
        }
        plain_dump, zstd_dump = scratch_dir / "plain.dump", scratch_dir / "plain.dump.zst"

        def command(argv: list[str], output: Path | None = None, **kwargs):
            def run() -> tuple[float, int, int]:
                seconds, peak, _ = timed(argv, **kwargs)
                return seconds, output.stat().st_size if output else 0, peak

            return run

        pg_dump = ["pg_dump", "-Fc", "-f", str(plain_dump), f"{SERVER}/{database}"]
        piped = f"pg_dump -Fc -Z0 {SERVER}/{database} | zstd -q -T0 -3 -o {zstd_dump} -f"
        materialize = [str(BIN / "dagster"), "asset", "materialize", "-m",
                       "backup_pipelines.definitions", "--select", "postgres_backup"]  # fmt: skip
        cli = [str(BIN / "backup-pipelines")]
        restored = f"{SERVER}/bench_restored_asset"

        def restore_run() -> tuple[float, int, int]:
            drop("bench_restored_asset")
            restore = [*cli, "restore", "postgres", "--database", database]
            return command([*restore, "--target-dsn", restored], env=env)()

        def pg_restore_run() -> tuple[float, int, int]:
            recreate("bench_restored_plain")
            restore = ["pg_restore", "-j2", "-d", f"{SERVER}/bench_restored_plain", str(plain_dump)]
            return command(restore)()

        runs = {
            "pg_dump -Fc": command(pg_dump, plain_dump),
            "pg_dump -Z0 | zstd -T0 -3": command(["sh", "-c", piped], zstd_dump),
            "snapshot (duration_s)": lambda: materialize_asset("postgres_backup", env),
            "dagster asset materialize": command(materialize, env=env),
            "backup-pipelines drill": command([*cli, "drill", "postgres"], env=env),
            "backup-pipelines restore": restore_run,
            "pg_restore -j2 (local file)": pg_restore_run,
        }
        rows = [(label, *median_of(args.repeat, run)) for label, run in runs.items()]
        drop("bench_restored_asset")
        drop("bench_restored_plain")

    baseline = rows[0][1]
    print(
        f"{database}: {database_size(database) / 2**20:.0f} MiB on the server, "
        f"{os.cpu_count()} cores, median of {args.repeat}"
    )
    print(f"{'':<30} {'seconds':>8} {'x pg_dump':>10} {'output MiB':>11} {'peak RSS MiB':>13}")
    for label, seconds, output, peak in rows:
        shown = f"{output / 2**20:>11.1f}" if output else f"{'':>11}"
        print(
            f"{label:<30} {seconds:>8.2f} {seconds / baseline:>10.2f} {shown} {peak / 1024:>13.1f}"
        )
    seconds = {label: figures[0] for label, *figures in rows}
    restore_ratio = seconds["backup-pipelines restore"] / seconds["pg_restore -j2 (local file)"]
    print(f"backup-pipelines restore: {restore_ratio:.2f}x pg_restore -j2 of a local file")
    print(
        "snapshot is the asset's duration_s; the command rows include their start-up; the "
        "drill makes, fills, compares and removes a throwaway cluster; the restore streams "
        "from the store into pg_restore (nothing plain on disk)"
    )


if __name__ == "__main__":
    main()
