"""Several sites at scale: what a code location, the daemon's ticks and the store listings cost
with 20, 100 and 200 targets across 4 sites, side by side.

    .venv/bin/python bench/sites_scale.py [--counts 20,100,200] [--snapshots 3]

For each count, a targets file of that many targets (Redis, PostgreSQL,
PostgreSQL base backups and Consul in turn, a quarter at each site; the
PostgreSQL ones on the machine's server, which does not archive its WAL, so
a base backup's schedule asks it at every tick and skips) and a bucket of
moto's S3 server holding
`--snapshots` snapshots of each. Then, each in a process of its own:

- load: a site's code location (its quarter of the targets) and the one
  location of the same file without sites: the seconds to build the
  definitions as a code server does, and the bytes of the repository
  snapshot the webserver and the daemon fetch from it;
- ticks: every schedule's tick of a site's location (as the daemon evaluates
  them when they fire) and one tick of its overdue sensor;
- store: S3 requests and seconds of `backup-pipelines snapshots` and of
  `backup-pipelines metrics --textfile` over every target.

Prints one row per count, per target where it should stay flat.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_listing import fill_s3, moto_endpoint, s3_env  # noqa: E402

SITES = ("east", "west", "north", "south")
KINDS = ("redis", "postgres", "postgres_base", "consul")

CHILD = """
import json, sys, time
started = time.monotonic()
from dagster import DagsterInstance, build_schedule_context, build_sensor_context
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value
from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines.runtime import load_runtime
runtime = load_runtime()
repository = build_definitions(runtime).get_repository_def()
loaded = time.monotonic() - started
size = len(serialize_value(RepositorySnap.from_def(repository)))
figures = {"load_s": loaded, "snapshot_bytes": size, "assets": len(repository.assets_defs_by_key)}
if sys.argv[1] == "ticks":
    instance = DagsterInstance.ephemeral()
    started = time.monotonic()
    for schedule in repository.schedule_defs:
        with build_schedule_context(instance=instance) as context:
            schedule.evaluate_tick(context)
    figures["schedules"] = len(repository.schedule_defs)
    figures["schedule_ticks_s"] = time.monotonic() - started
    sensor = repository.get_sensor_def("backup_overdue_sensor")
    started = time.monotonic()
    with build_sensor_context(instance=instance, resources={"runtime": runtime}) as context:
        sensor.evaluate_tick(context)
    figures["overdue_tick_s"] = time.monotonic() - started
print(json.dumps(figures))
"""

COUNTING = """
import json, sys, time
import botocore.client
calls = []
original = botocore.client.BaseClient._make_api_call
def counted(self, operation, params):
    calls.append(operation)
    return original(self, operation, params)
botocore.client.BaseClient._make_api_call = counted
from backup_pipelines.cli.commands import main
started = time.monotonic()
main(sys.argv[1:])
import collections
print(json.dumps({"seconds": time.monotonic() - started, "requests": len(calls),
                  "by_operation": collections.Counter(calls)}))
"""


ADDRESS = {
    "redis": "host: 10.0.0.1, port: 6379",
    "postgres": 'backup_dsn: "postgresql://postgres@127.0.0.1:5432/postgres"',
    "postgres_base": 'backup_dsn: "postgresql://postgres@127.0.0.1:5432/postgres"',
    "consul": 'http_addr: "http://10.0.0.2:8500"',
}


def targets_file(path: Path, count: int, sites: bool = True) -> list[str]:
    """`count` targets, kinds (and sites) in turn; their source names."""
    by_kind: dict[str, list[str]] = {kind: [] for kind in KINDS}
    names = []
    for n in range(count):
        kind = KINDS[n % len(KINDS)]
        site = f", site: {SITES[n // len(KINDS) % len(SITES)]}" if sites else ""
        by_kind[kind].append(f"  t{n:03d}: {{{ADDRESS[kind]}{site}}}")
        names.append(f"{kind}.t{n:03d}")
    path.write_text(
        "".join(f"{kind}:\n" + "\n".join(lines) + "\n" for kind, lines in by_kind.items())
    )
    return names


def child(code: str, env: dict[str, str], *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(count: int, snapshots: int, endpoint: str, workdir: Path) -> dict:
    targets, unsited = workdir / f"targets-{count}.yaml", workdir / f"whole-{count}.yaml"
    names = targets_file(targets, count)
    targets_file(unsited, count, sites=False)
    bucket = f"bench-sites-{count}"
    fill_s3(endpoint, bucket, snapshots, sources=names)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUP_", "DAGSTER_"))}
    env = {
        **base,
        **s3_env(endpoint, bucket),
        "BACKUP_TARGETS_FILE": str(targets),
        "BACKUP_ARTIFACTS_DIR": str(workdir / "artifacts"),
        "DAGSTER_HOME": str(workdir),
    }
    site = child(CHILD, {**env, "BACKUP_SITE": SITES[0]}, "ticks")
    whole = child(CHILD, {**env, "BACKUP_TARGETS_FILE": str(unsited)}, "load")
    listed = child(COUNTING, env, "snapshots", "--json")
    scraped = child(COUNTING, env, "metrics", "--textfile", str(workdir / "metrics.prom"))
    return {"count": count, "site": site, "whole": whole, "snapshots": listed, "metrics": scraped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="20,100,200")
    parser.add_argument("--snapshots", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with moto_endpoint() as endpoint, tempfile.TemporaryDirectory() as scratch:
        for count in (int(c) for c in args.counts.split(",")):
            rows.append(measure(count, args.snapshots, endpoint, Path(scratch)))
    print(
        f"\n{len(SITES)} sites, kinds in turn ({', '.join(KINDS)}), {args.snapshots} snapshots each"
    )
    print(f"{'targets':>7} | {'site load s':>11} {'snap KiB':>8} {'KiB/target':>10} | "
          f"{'whole load s':>12} {'snap KiB':>8} | {'sched ticks s':>13} {'overdue s':>9} | "
          f"{'snapshots req':>13} {'s':>5} | {'metrics req':>11} {'s':>5}")  # fmt: skip
    for row in rows:
        site, whole, per_site = row["site"], row["whole"], row["count"] / len(SITES)
        print(
            f"{row['count']:>7} | {site['load_s']:>11.2f} {site['snapshot_bytes'] / 1024:>8.0f} "
            f"{site['snapshot_bytes'] / 1024 / per_site:>10.1f} | {whole['load_s']:>12.2f} "
            f"{whole['snapshot_bytes'] / 1024:>8.0f} | {site['schedule_ticks_s']:>13.2f} "
            f"{site['overdue_tick_s']:>9.2f} | {row['snapshots']['requests']:>13} "
            f"{row['snapshots']['seconds']:>5.1f} | {row['metrics']['requests']:>11} "
            f"{row['metrics']['seconds']:>5.1f}"
        )
    largest = rows[-1]
    for command in ("snapshots", "metrics"):
        operations = ", ".join(f"{n} {op}" for op, n in largest[command]["by_operation"].items())
        print(f"{command} at {largest['count']} targets: {operations}")


if __name__ == "__main__":
    main()
