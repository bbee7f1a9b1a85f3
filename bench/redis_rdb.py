"""The redis_backup asset side by side with `redis-cli --rdb` alone, on the same server.

    .venv/bin/python bench/redis_rdb.py [--keys 100000] [--repeat 3]

Starts a private redis-server on a free loopback port with
`repl-diskless-sync-delay 0` (the default 5 s wait would add the same pause
to both and hide the work), fills it with string and hash keys, then runs
each contender in its own process and prints the median time, output size
and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import materialize_asset, median_of, print_table, timed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from backup_pipelines_tests.redis_fixtures import redis_process


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bench-redis-") as scratch,
        redis_process(Path(scratch) / "server") as client,
    ):
        scratch_dir = Path(scratch)
        port = client.connection_pool.connection_kwargs["port"]
        fill(client, args.keys)
        used = client.info("memory")["used_memory"]
        env = {
            **os.environ,
            "BACKUP_ARTIFACTS_DIR": str(scratch_dir / "artifacts"),
            "BACKUP_REDIS_HOST": "127.0.0.1",
            "BACKUP_REDIS_PORT": str(port),
            "DAGSTER_HOME": scratch,
        }
        rdb = scratch_dir / "plain.rdb"

        def redis_cli_run() -> tuple[float, int, int]:
            seconds, peak, _ = timed(
                ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "--rdb", str(rdb)]
            )
            return seconds, rdb.stat().st_size, peak

        rows = [
            (
                "redis_backup asset",
                *median_of(args.repeat, lambda: materialize_asset("redis_backup", env)),
            ),
            ("redis-cli --rdb", *median_of(args.repeat, redis_cli_run)),
        ]

    print_table(
        f"{args.keys} keys, used_memory {used / 2**20:.0f} MiB, {os.cpu_count()} cores, "
        f"median of {args.repeat}",
        rows,
    )
    print("asset time is its duration_s metadata (INFO, sync, zstd, sha256, commit)")


if __name__ == "__main__":
    main()
