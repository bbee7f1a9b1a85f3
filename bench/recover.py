"""Whole-system recovery: `recover --at T` of every source, next to the sum of the same
restores run one by one.

    .venv/bin/python bench/recover.py [--megabytes 100] [--keys 200000] [--files 3000] [--big-mb 50]

Makes and backs up (each backup asset in its own process, into a local
store): a throwaway cluster archiving its WAL through `wal-push`, filled with
`bench/postgres.py`'s CRM-like database and then changed, so the WAL after
the base backup holds real work to replay (`postgres` and `postgres_base`); a
redis-server filled as `bench/redis_rdb.py` fills it; a vhost with queues,
exchanges and bindings on the machine's RabbitMQ; Consul (the tests' HTTP
double) with as many keys as a large installation keeps; and a documents
tree as `bench/documents.py` builds it. Then, to the moment after all of
them, into fresh targets:

- one by one: `backup-pipelines restore SOURCE ...` per source, each in its
  own process (`postgres_base` with `--target-time T --port`, so it is
  started and waited for until promoted, as `recover` does);
- at once: `backup-pipelines recover --at T --into FILE`.

Prints each source's restore, its duration inside the recovery (from the
recovery's own report) and the duration the plan expected, then the totals.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import psycopg
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from documents import build_tree  # noqa: E402
from measure import materialize_asset, timed  # noqa: E402
from postgres import FILL, ROWS_PER_MB, SCHEMA  # noqa: E402
from redis_rdb import fill as fill_redis  # noqa: E402

from backup_pipelines.processes import free_loopback_port  # noqa: E402
from backup_pipelines_tests.archiving_cluster import (  # noqa: E402
    COMMAND,
    Server,
    archiving_cluster,
    owned_directory,
    restore_dir,
    server_writable,
)
from backup_pipelines_tests.consul_double import MANAGEMENT as CONSUL_MANAGEMENT  # noqa: E402
from backup_pipelines_tests.consul_double import ConsulDouble  # noqa: E402
from backup_pipelines_tests.redis_fixtures import redis_process  # noqa: E402
from backup_pipelines_tests.test_redis import port_of  # noqa: E402

DATABASE = "bench_recover"
MANAGEMENT = "http://127.0.0.1:15672"
AUTH = ("guest", "guest")
TOKEN = "bench-consul-token"
CONSUL_KEYS = 5000
"""The double answers from this process, one request at a time: more keys measure it."""
ORDER = ("postgres", "postgres_base", "redis", "rabbitmq", "consul", "documents")


def fill_postgres(server: Server, megabytes: int) -> None:
    server.query(f"CREATE DATABASE {DATABASE}")
    rows = {table: per_mb * megabytes for table, per_mb in ROWS_PER_MB.items()}
    with server.connect(DATABASE) as connection:
        connection.execute(SCHEMA)
        connection.execute(FILL.format(**rows))


def fill_broker(vhost: str, queues: int) -> None:
    v = quote(vhost, safe="")
    requests.put(f"{MANAGEMENT}/api/vhosts/{v}", auth=AUTH, timeout=30).raise_for_status()
    for n in range(queues):
        body = {"durable": True, "arguments": {"x-max-length": 1000 + n}}
        requests.put(f"{MANAGEMENT}/api/queues/{v}/crm.q{n}", json=body, auth=AUTH, timeout=30)
        requests.put(
            f"{MANAGEMENT}/api/exchanges/{v}/crm.x{n}",
            json={"type": "topic"},
            auth=AUTH,
            timeout=30,
        )
        requests.post(
            f"{MANAGEMENT}/api/bindings/{v}/e/crm.x{n}/q/crm.q{n}",
            json={"routing_key": f"crm.{n}.#"},
            auth=AUTH,
            timeout=30,
        )


def drop_vhost(vhost: str) -> None:
    requests.delete(f"{MANAGEMENT}/api/vhosts/{quote(vhost, safe='')}", auth=AUTH, timeout=30)


def drop_database() -> None:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


class Targets:
    """Fresh, empty targets for one recovery of every source, and their options."""

    def __init__(self, scratch: Path, redis_port: int, consul: ConsulDouble, vhost: str):
        self.data_dir, self.pg_port = restore_dir("bench-recover-pg-"), free_loopback_port()
        self.documents = Path(tempfile.mkdtemp(prefix="documents-", dir=scratch)) / "tree"
        self.consul = consul
        self.options = {
            "postgres": {"target_dsn": "postgresql://postgres@127.0.0.1:5432/postgres"},
            "postgres_base": {"target_dir": str(self.data_dir), "port": self.pg_port},
            "redis": {"target_url": f"redis://127.0.0.1:{redis_port}"},
            "rabbitmq": {"management_url": MANAGEMENT, "vhost": vhost},
            "consul": {"http_addr": consul.url},
            "documents": {"target_dir": str(self.documents)},
        }

    def restore_argv(self, source: str, at: str) -> list[str]:
        """`restore SOURCE` with this target, as the into file says it (flags for keys)."""
        argv = [str(COMMAND), "restore", source]
        for key, value in self.options[source].items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return argv + (["--target-time", at] if source == "postgres_base" else [])

    def release(self) -> None:
        Server(self.data_dir, self.pg_port, self.data_dir / "recovery.log").stop()
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)
        self.consul.state.kv.clear()


def one_by_one(make_targets: Callable[[], Targets], at: str) -> dict[str, float]:
    targets, seconds = make_targets(), {}
    try:
        for source in ORDER:
            seconds[source], _, _ = timed(targets.restore_argv(source, at))
    finally:
        targets.release()
    return seconds


def at_once(make_targets: Callable[[], Targets], at: str, scratch: Path) -> tuple[float, dict]:
    targets = make_targets()
    into = scratch / "into.json"
    into.write_text(json.dumps(targets.options))  # JSON is YAML
    try:
        elapsed, _, printed = timed(
            [str(COMMAND), "recover", "--at", at, "--into", str(into), "--json"]
        )
    finally:
        targets.release()
    return elapsed, {step["source"]: step for step in json.loads(printed)["sources"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--big-mb", type=int, default=50)
    args = parser.parse_args()
    home = owned_directory("bench-recover-")
    scratch = Path(tempfile.mkdtemp(prefix="bench-recover-scratch-"))
    vhost = f"bench-recover-{os.getpid()}"
    os.environ.update(
        BACKUP_ARTIFACTS_DIR=str(server_writable(home / "artifacts")),
        DAGSTER_HOME=str(home),
        BACKUP_POSTGRES_DATABASES=DATABASE,
        BACKUP_REDIS_HOST="127.0.0.1",
        BACKUP_CONSUL_TOKEN=TOKEN,
        BACKUP_DOCUMENTS_ROOT=str(scratch / "documents"),
        BACKUP_RESTIC_PASSWORD="bench-password",
    )
    source_consul = ConsulDouble({TOKEN: CONSUL_MANAGEMENT})
    target_consul = ConsulDouble({TOKEN: CONSUL_MANAGEMENT})
    try:
        with (
            archiving_cluster(max_wal_size="'4GB'") as cluster,
            redis_process(scratch / "redis") as source_redis,
            redis_process(scratch / "redis-target") as target_redis,
        ):
            os.environ["BACKUP_POSTGRES_BACKUP_DSN"] = cluster.dsn
            os.environ["BACKUP_REDIS_PORT"] = str(
                source_redis.connection_pool.connection_kwargs["port"]
            )
            os.environ["BACKUP_CONSUL_HTTP_ADDR"] = source_consul.url
            print(
                f"filling: PostgreSQL {args.megabytes} MB, Redis {args.keys} keys, documents "
                f"{args.files} files + {args.big_mb} MiB, Consul {CONSUL_KEYS} keys, 200 queues"
            )
            fill_postgres(cluster, args.megabytes)
            fill_redis(source_redis, args.keys)
            fill_broker(vhost, 200)
            rng = random.Random(7)
            for n in range(CONSUL_KEYS):
                source_consul.state.put(f"crm/services/{n % 500}/key-{n}", rng.randbytes(200))
            build_tree(scratch / "documents", args.files, args.big_mb)
            backed_up = {}
            for source in ORDER:
                backed_up[source], _, _ = materialize_asset(f"{source}_backup", os.environ)
                if source == "postgres_base":  # WAL after the base backup, to replay
                    cluster.query("UPDATE activities SET subject = upper(subject) WHERE id % 4 = 0",
                                  DATABASE)  # fmt: skip
            time.sleep(1.1)  # manifests keep whole seconds
            at = datetime.now(UTC).isoformat()
            cluster.switch_wal()
            target_port = port_of(target_redis)

            def make_targets() -> Targets:
                drop_database()
                drop_vhost(vhost)
                target_redis.flushall()
                return Targets(scratch, target_port, target_consul, vhost)

            single = one_by_one(make_targets, at)
            whole, report = at_once(make_targets, at, scratch)
    finally:
        drop_database()
        drop_vhost(vhost)
        source_consul.close()
        target_consul.close()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nrecovery of every source to {at}")
    print(
        f"{'source':<14} {'backup s':>9} {'restore s':>10} {'in recover s':>13} {'expected s':>11}"
    )
    for source in ORDER:
        step = report[source]
        print(f"{source:<14} {backed_up[source]:>9.2f} {single[source]:>10.2f} "
              f"{step['duration_s']:>13.2f} {step['expected_s']:>11.1f}")  # fmt: skip
    print(f"{'sum of restores, one process each':<40} {sum(single.values()):>8.2f} s")
    print(f"{'recover --at T, everything':<40} {whole:>8.2f} s")


if __name__ == "__main__":
    main()
