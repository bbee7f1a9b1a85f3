"""Point-in-time recovery: `wal-push` per WAL segment, the base backup and its restore, side by
side with the plain tools, and the recovery point archiving achieves.

    .venv/bin/python bench/pitr.py [--megabytes 200] [--segments 41] [--repeat 3]

Makes a throwaway cluster (as the `postgres` OS user) whose archive_command
copies each WAL file aside and pushes it with `wal-push`, and fills it with
`bench/postgres.py`'s CRM-like database (realistic entropy: its WAL is real
WAL of real-looking rows). Then, each in its own process:

- per 16 MiB segment: `wal-push` into a local store and into moto's S3
  server (what archive_command costs PostgreSQL when nothing waits behind
  it), next to `cp` and `zstd -3` of the same segment;
- a backlog: every segment waiting (`.ready`) at once, drained as
  PostgreSQL's archiver does (one `wal-push` after another, `.ready` renamed
  `.done` on exit 0; the first starts the helper that pushes the others
  ahead), into the local store and into moto, next to `zstd -3` of the same
  files one by one;
- during a bulk insert (`CREATE TABLE ... AS SELECT` of the largest table):
  the WAL it writes per second, and the most `pg_wal` held meanwhile;
- the base backup: `postgres_base_backup`'s snapshot time (its `duration_s`)
  next to `pg_basebackup -Ft -X none` to a directory, and piped through
  `zstd -T0 -3`;
- its restore: `backup-pipelines restore postgres_base` next to `tar -x` of
  the plain tar;
- the recovery point: with `archive_timeout = 10`, the time from a commit
  until the WAL file holding it is archived (at most archive_timeout plus
  one push: with the README's `archive_timeout = 60`, about a minute).

Prints medians, the ratio to the plain tool, output sizes and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import materialize_asset, median_of, timed  # noqa: E402
from postgres import FILL, ROWS_PER_MB, SCHEMA  # noqa: E402
from store_listing import KEYS, moto_endpoint, s3_env  # noqa: E402

from backup_pipelines_tests.archiving_cluster import (  # noqa: E402
    COMMAND,
    archiving_cluster,
    owned_directory,
    server_writable,
)

SEGMENT = 16 << 20


def fill(dsn: str, megabytes: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("CREATE DATABASE crm")
    rows = {table: per_mb * megabytes for table, per_mb in ROWS_PER_MB.items()}
    with psycopg.connect(dsn.rsplit("/", 1)[0] + "/crm", autocommit=True) as connection:
        connection.execute(SCHEMA)
        connection.execute(FILL.format(**rows))


def per_segment(label: str, argv_for, segments: list[Path], env=None) -> tuple:
    """Median seconds and peak RSS of one process per segment, as archive_command runs."""
    runs = [timed(argv_for(segment), env=env) for segment in segments]
    return label, statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def moto_bucket(endpoint: str, bucket: str) -> dict[str, str]:
    """A new bucket on moto's server, and the environment that stores into it."""
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEYS["access"],
        aws_secret_access_key=KEYS["secret"],
    ).create_bucket(Bucket=bucket)
    return {**os.environ, **s3_env(endpoint, bucket)}


def push_rows(segments: list[Path], scratch: Path) -> list[tuple]:
    local = {**os.environ, "BACKUP_ARTIFACTS_DIR": str(scratch / "push-store")}
    copies = scratch / "copies"
    copies.mkdir()
    rows = [
        per_segment("cp", lambda s: ["cp", str(s), str(copies / s.name)], segments),
        per_segment(
            "zstd -3",
            lambda s: ["zstd", "-q", "-f", "-3", str(s), "-o", str(copies / f"{s.name}.zst")],
            segments,
        ),
        per_segment(
            "wal-push (local store)",
            lambda s: [str(COMMAND), "wal-push", str(s)],
            segments,
            env=local,
        ),
    ]
    with moto_endpoint() as endpoint:
        remote = moto_bucket(endpoint, "wal")
        rows.append(
            per_segment(
                "wal-push (moto S3)",
                lambda s: [str(COMMAND), "wal-push", str(s)],
                segments,
                env=remote,
            )
        )
    return rows


def drain_backlog(segments: list[Path], scratch: Path, env: dict[str, str]) -> float:
    """Seconds for PostgreSQL's archiver loop to archive `segments`, all waiting at once."""
    wal = scratch / f"pg_wal-{time.monotonic_ns()}"
    (wal / "archive_status").mkdir(parents=True)
    for segment in segments:
        shutil.copy(segment, wal / segment.name)
        (wal / "archive_status" / f"{segment.name}.ready").touch()
    started = time.monotonic()
    for segment in segments:
        subprocess.run([str(COMMAND), "wal-push", str(wal / segment.name)], env=env, check=True)
        (wal / "archive_status" / f"{segment.name}.ready").rename(
            wal / "archive_status" / f"{segment.name}.done"
        )
    elapsed = time.monotonic() - started
    shutil.rmtree(wal)
    return elapsed


def zstd_one_by_one(segments: list[Path], scratch: Path) -> float:
    started = time.monotonic()
    for segment in segments:
        subprocess.run(["zstd", "-q", "-f", "-3", str(segment), "-o", str(scratch / "one.zst")])
    return time.monotonic() - started


def backlog_rows(
    segments: list[Path], scratch: Path, repeat: int
) -> list[tuple[str, float, float]]:
    """(label, median seconds, median ratio to zstd of the same round): the three drained in
    turn each round, so a slower moment of the machine weighs on all of them alike."""
    runs: dict[str, list[tuple[float, float]]] = {}
    with moto_endpoint() as endpoint:
        for round_ in range(repeat):
            zstd = zstd_one_by_one(segments, scratch)
            local = {**os.environ, "BACKUP_ARTIFACTS_DIR": str(scratch / f"backlog-{round_}")}
            remote = moto_bucket(endpoint, f"backlog-{round_}")
            for label, seconds in (
                ("zstd -3, one after another", zstd),
                ("wal-push backlog (local store)", drain_backlog(segments, scratch, local)),
                ("wal-push backlog (moto S3)", drain_backlog(segments, scratch, remote)),
            ):
                runs.setdefault(label, []).append((seconds, seconds / zstd))
    return [
        (
            label,
            statistics.median(s for s, _ in found),
            statistics.median(r for _, r in found),
        )
        for label, found in runs.items()
    ]


class WalWatch:
    """Samples the size of `pg_wal` while a bulk insert runs (the most it held)."""

    def __init__(self, data: Path):
        self.wal, self.most, self._stop = data / "pg_wal", 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> WalWatch:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            held = sum(p.stat().st_size for p in self.wal.glob("[0-9A-F]*") if p.is_file())
            self.most = max(self.most, held)


def bulk_insert(dsn: str) -> None:
    """A bulk load as fast as the server writes: every activity copied into a new table."""
    with psycopg.connect(dsn.rsplit("/", 1)[0] + "/crm", autocommit=True) as connection:
        connection.execute("CREATE TABLE activities_bulk AS SELECT * FROM activities")


def wal_written(dsn: str) -> int:
    with psycopg.connect(dsn) as connection:
        [(lsn,)] = connection.execute("SELECT pg_current_wal_lsn() - '0/0'").fetchall()
    return int(lsn)


def recovery_point(dsn: str, repeat: int) -> float:
    """Median seconds from a commit until its WAL file is archived, archive_timeout = 10."""
    lags = []
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("ALTER SYSTEM SET archive_timeout = 10")
        connection.execute("SELECT pg_reload_conf()")
        connection.execute("CREATE TABLE heartbeat (at timestamptz)")
        for _ in range(repeat):
            time.sleep(11)  # start from a fresh segment
            connection.execute("INSERT INTO heartbeat VALUES (now())")
            committed = time.monotonic()
            [(wal,)] = connection.execute(
                "SELECT pg_walfile_name(pg_current_wal_insert_lsn())"
            ).fetchall()
            while True:
                [(archived,)] = connection.execute(
                    "SELECT last_archived_wal FROM pg_stat_archiver"
                ).fetchall()
                if archived and archived[:24] >= wal:
                    break
                time.sleep(0.05)
            lags.append(time.monotonic() - committed)
    return statistics.median(lags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--segments", type=int, default=41)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    home, raw = owned_directory("bench-pitr-store-"), owned_directory("bench-pitr-wal-")
    store = server_writable(home / "artifacts")
    os.environ.update(BACKUP_ARTIFACTS_DIR=str(store), DAGSTER_HOME=str(home))
    push = f"cp %p {raw}/%f && {COMMAND} wal-push %p"
    scratch = Path(tempfile.mkdtemp(prefix="bench-pitr-"))
    try:
        with archiving_cluster(archive_command=f"'{push}'", max_wal_size="'4GB'") as server:
            os.environ["BACKUP_POSTGRES_BACKUP_DSN"] = server.dsn
            print(f"filling a CRM-like database of about {args.megabytes} MB")
            fill(server.dsn, args.megabytes)
            before, started = wal_written(server.dsn), time.monotonic()
            with WalWatch(server.data) as watch:
                bulk_insert(server.dsn)
            fill_rate = (wal_written(server.dsn) - before) / (time.monotonic() - started)
            server.switch_wal()
            segments = sorted(p for p in raw.iterdir() if len(p.name) == 24)[-args.segments :]
            pushes = push_rows(segments, scratch)
            backlog = backlog_rows(segments, scratch, args.repeat)
            plain_dir, piped = scratch / "plain", scratch / "piped.tar.zst"
            basebackup = ["pg_basebackup", "-d", server.dsn, "-Ft", "-X", "none", "-c", "fast"]

            def plain_run() -> tuple[float, int, int]:
                shutil.rmtree(plain_dir, ignore_errors=True)
                seconds, peak, _ = timed([*basebackup, "-D", str(plain_dir)])
                return seconds, (plain_dir / "base.tar").stat().st_size, peak

            def piped_run() -> tuple[float, int, int]:
                line = f"{' '.join(basebackup)} -D - | zstd -q -T0 -3 -o {piped} -f"
                seconds, peak, _ = timed(["sh", "-c", line])
                return seconds, piped.stat().st_size, peak

            def restore_run() -> tuple[float, int, int]:
                target = scratch / "restored"
                shutil.rmtree(target, ignore_errors=True)
                argv = [str(COMMAND), "restore", "postgres_base", "--target-dir", str(target)]
                seconds, peak, _ = timed(argv)
                return seconds, 0, peak

            def untar_run() -> tuple[float, int, int]:
                target = scratch / "untarred"
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir()
                seconds, peak, _ = timed(
                    ["tar", "-xf", str(plain_dir / "base.tar"), "-C", str(target)]
                )
                return seconds, 0, peak

            base = [
                ("pg_basebackup -Ft (plain)", *median_of(args.repeat, plain_run)),
                ("pg_basebackup | zstd -T0 -3", *median_of(args.repeat, piped_run)),
                (
                    "postgres_base_backup (duration_s)",
                    *median_of(
                        args.repeat, lambda: materialize_asset("postgres_base_backup", os.environ)
                    ),
                ),
                ("tar -x of the plain tar", *median_of(args.repeat, untar_run)),
                ("restore postgres_base", *median_of(args.repeat, restore_run)),
            ]
            lag = recovery_point(server.dsn, args.repeat)
            cluster_mib = (plain_dir / "base.tar").stat().st_size / 2**20
    finally:
        for path in (scratch, home, raw):
            shutil.rmtree(path, ignore_errors=True)

    print(
        f"\nper WAL segment (16 MiB, {len(segments)} real segments), median, {os.cpu_count()} cores"
    )
    print(f"{'':<32} {'ms':>8} {'MiB/s':>8} {'peak RSS MiB':>13}")
    for label, seconds, peak in pushes:
        print(
            f"{label:<32} {seconds * 1000:>8.0f} {SEGMENT / 2**20 / seconds:>8.0f} "
            f"{peak / 1024:>13.1f}"
        )
    print(
        f"\na backlog of {len(segments)} segments, drained as PostgreSQL's archiver does, "
        f"median of {args.repeat} rounds (ratio: to zstd in the same round)"
    )
    print(f"{'':<32} {'seconds':>8} {'MiB/s':>8} {'x zstd':>8}")
    for label, seconds, ratio in backlog:
        rate = len(segments) * SEGMENT / 2**20 / seconds
        print(f"{label:<32} {seconds:>8.2f} {rate:>8.0f} {ratio:>8.2f}")
    print(
        f"\nduring a bulk insert: {fill_rate / 2**20:.0f} MiB/s of WAL written, pg_wal held at "
        f"most {watch.most / 2**20:.0f} MiB (max_wal_size 4 GB)"
    )
    print(f"\nbase backup of a {cluster_mib:.0f} MiB cluster, median of {args.repeat}")
    print(f"{'':<36} {'seconds':>8} {'output MiB':>11} {'peak RSS MiB':>13}")
    for label, seconds, output, peak in base:
        shown = f"{output / 2**20:>11.1f}" if output else f"{'':>11}"
        print(f"{label:<36} {seconds:>8.2f} {shown} {peak / 1024:>13.1f}")
    print(f"\nrecovery point: a commit's WAL archived {lag:.1f} s later (archive_timeout = 10)")


if __name__ == "__main__":
    main()
