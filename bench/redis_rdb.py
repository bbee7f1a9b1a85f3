"""The Redis backup and restore side by side with the plain tools, on the same servers.

    .venv/bin/python bench/redis_rdb.py [--keys 1000000] [--repeat 3]

Starts private redis-servers on free loopback ports with
`repl-diskless-sync-delay 0` (the default 5 s wait would add the same pause
to every replication and hide the work) and fills the source with string
and hash keys. Then, each contender in its own process:

- backup: the redis_backup asset's snapshot time against `redis-cli --rdb`;
- restore: `backup-pipelines restore redis --target-url` into a running,
  empty server (by replication, and with REPLICAOF renamed away as managed
  services do, by MIGRATE from a throw-away server) against a `redis-server`
  cold-started on the same RDB, the fastest any server takes it in.

Prints the median time, output size and peak RSS of each.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import materialize_asset, median_of, print_table, timed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from backup_pipelines_tests.conftest import free_port
from backup_pipelines_tests.redis_fixtures import redis_process

CLI = Path(sys.executable).parent / "backup-pipelines"
NO_REPLICAOF = ("--rename-command", "REPLICAOF", "", "--rename-command", "SLAVEOF", "")


def fill(client: redis.Redis, keys: int) -> None:
    rng = random.Random(1)
    pipe = client.pipeline(transaction=False)
    for n in range(keys):
        if n % 4 == 0:
            pipe.hset(f"contact:{n}", mapping={"name": f"Name {n}", "score": rng.random()})
        else:
            pipe.set(f"fsm:{n}", rng.randbytes(64).hex(), ex=86_400)
        if n % 5000 == 0:
            pipe.execute()
    pipe.execute()


def cold_start(rdb: Path) -> tuple[float, int, int]:
    """Start to loaded of a redis-server on `rdb`; its RSS once loaded stands for peak."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir",
               str(rdb.parent), "--dbfilename", rdb.name, "--save", "", "--appendonly", "no",
               "--logfile", str(rdb.parent / "cold-start.log")]  # fmt: skip
    client = redis.Redis(port=port)
    started = time.monotonic()
    server = subprocess.Popen(command)
    try:
        while True:
            try:
                if client.info("persistence")["loading"] == 0:
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            time.sleep(0.005)
        elapsed = time.monotonic() - started
        rss_kib = client.info("memory")["used_memory_rss"] // 1024
    finally:
        server.terminate()
        server.wait()
    return elapsed, rdb.stat().st_size, rss_kib


def restore_into(target: redis.Redis, env: Mapping[str, str]) -> tuple[float, int, int]:
    target.flushall()
    url = f"redis://127.0.0.1:{target.connection_pool.connection_kwargs['port']}"
    seconds, peak, _ = timed([str(CLI), "restore", "redis", "--target-url", url], env=env)
    return seconds, 0, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bench-redis-") as scratch,
        redis_process(Path(scratch) / "server") as client,
        redis_process(Path(scratch) / "target") as target,
        redis_process(Path(scratch) / "managed", config=NO_REPLICAOF) as managed,
    ):
        scratch_dir = Path(scratch)
        port = client.connection_pool.connection_kwargs["port"]
        fill(client, args.keys)
        used = client.info("memory")["used_memory"]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")},
            "BACKUP_ARTIFACTS_DIR": str(scratch_dir / "artifacts"),
            "BACKUP_REDIS_HOST": "127.0.0.1",
            "BACKUP_REDIS_PORT": str(port),
            "DAGSTER_HOME": scratch,
        }
        rdb = scratch_dir / "plain" / "plain.rdb"
        rdb.parent.mkdir()

        def redis_cli_run() -> tuple[float, int, int]:
            seconds, peak, _ = timed(
                ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--rdb", str(rdb)]
            )
            return seconds, rdb.stat().st_size, peak

        runs = {
            "redis_backup asset": lambda: materialize_asset("redis_backup", env),
            "redis-cli --rdb": redis_cli_run,
            "restore (replication)": lambda: restore_into(target, env),
            "restore (no REPLICAOF: MIGRATE)": lambda: restore_into(managed, env),
            "redis-server cold start": lambda: cold_start(rdb),
        }
        rows = [(label, *median_of(args.repeat, run)) for label, run in runs.items()]

    print_table(
        f"{args.keys} keys, used_memory {used / 2**20:.0f} MiB, {os.cpu_count()} cores, "
        f"median of {args.repeat}",
        rows,
    )
    cold = rows[-1][1]
    for label, seconds, _, _ in rows[2:4]:
        print(f"{label}: {seconds / cold:.1f}x the cold start")
    print(
        "asset time is its duration_s metadata (INFO, sync, zstd, sha256, commit); restores "
        "include the command's start-up; the cold start's RSS is the loaded server's"
    )


if __name__ == "__main__":
    main()
