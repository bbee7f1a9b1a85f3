"""Copies into copy stores next to plain boto3 copies of the same objects, and what a
configured copy store adds to a backup.

    .venv/bin/python bench/copy_stores.py [--snapshots 8] [--mb 48] [--repeat 3] [--keys 200000]

Fills a bucket of one moto server (the primary) with snapshots of random,
incompressible artifacts, then, each in its own process and into a fresh
bucket or directory every time:

- `backup-pipelines copy --store far` into a bucket of a second moto server
  (streamed through this host), against a bare boto3 loop that streams every
  object of the primary into a bucket of that server (`get_object` into
  `upload_fileobj`: what `aws s3 cp` does between two endpoints);
- `--store near` into another bucket of the same server (copied by the
  service), against a bare boto3 loop of `client.copy` (`aws s3 cp s3://a
  s3://b`);
- `--store disk` into a local directory, against boto3's `download_file` of
  every object.

The copy command reads every artifact back from where it went and checks it
against the manifest; the plain loops do not. Then the redis_backup asset
on a private redis-server, with and without the stores file, as the
process's wall time and the asset's own duration (a backup never touches a
copy store: the goal is no difference). Prints medians and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import boto3
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import MATERIALIZE_CHILD, median_of, timed  # noqa: E402
from redis_rdb import fill  # noqa: E402

from backup_pipelines.runtime import load_runtime  # noqa: E402
from backup_pipelines_tests.conftest import commit_snapshot, moto_server  # noqa: E402
from backup_pipelines_tests.redis_fixtures import redis_process  # noqa: E402

CLI = Path(sys.executable).parent / "backup-pipelines"
KEYS = ("bench-access-key", "bench-secret-key")
PRIMARY_BUCKET = "primary"
PLAIN_COPY = """
import sys, boto3
from boto3.s3.transfer import TransferConfig
source_url, target_url, bucket, target, mode, access, secret = sys.argv[1:8]
def client(url):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=access, aws_secret_access_key=secret)
source, destination = client(source_url), client(target_url)
pages = source.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="backups/")
for page in pages:
    for item in page.get("Contents", []):
        key = item["Key"]
        if mode == "server-side":
            destination.copy({"Bucket": bucket, "Key": key}, target, key)
        elif mode == "download":
            path = target + "/" + key
            import os; os.makedirs(os.path.dirname(path), exist_ok=True)
            source.download_file(bucket, key, path)
        else:
            body = source.get_object(Bucket=bucket, Key=key)["Body"]
            destination.upload_fileobj(body, target, key)
"""


def s3(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEYS[0],
        aws_secret_access_key=KEYS[1],
    )


def drop_bucket(endpoint: str, bucket: str) -> None:
    """Empty and remove a bucket: moto keeps every object in memory."""
    client = s3(endpoint)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


def fill_primary(env: dict[str, str], snapshots: int, megabytes: int) -> int:
    """`snapshots` snapshots of two random artifacts of `megabytes`/2 MB each; bytes stored."""
    os.environ.update(env)
    runtime = load_runtime()
    half = (megabytes << 20) // 2
    for n in range(snapshots):
        artifacts = {"dump.rdb": os.urandom(half), "appendonly.aof": os.urandom(half)}
        commit_snapshot(
            runtime.store, runtime.staging.directory, artifacts, source="redis", run_id=f"{n:08x}-b"
        )
    return runtime.store.usage("redis")


class Stores:
    """A stores file naming a fresh bucket (or directory) for each copy store."""

    def __init__(self, scratch: Path, primary: str, far: str):
        self.scratch, self.primary, self.far = scratch, primary, far
        self.file = scratch / "stores.yaml"
        self.write()

    def write(self) -> dict[str, str]:
        self.names = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in ("far", "near", "disk")}
        s3(self.far).create_bucket(Bucket=self.names["far"])
        s3(self.primary).create_bucket(Bucket=self.names["near"])
        keys = {"access_key": "${BENCH_ACCESS_KEY}", "secret_key": "${BENCH_SECRET_KEY}"}
        stores = {
            "far": {"s3": {"endpoint_url": self.far, "bucket": self.names["far"], **keys}},
            "near": {"s3": {"endpoint_url": self.primary, "bucket": self.names["near"], **keys}},
            "disk": {"local": {"root": str(self.scratch / self.names["disk"])}},
        }
        self.file.write_text(yaml.safe_dump(stores, sort_keys=False))
        return self.names

    def drop(self) -> None:
        drop_bucket(self.far, self.names["far"])
        drop_bucket(self.primary, self.names["near"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=8)
    parser.add_argument("--mb", type=int, default=48, help="MB of artifacts per snapshot")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keys", type=int, default=200_000, help="keys for the backup")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bench-copy-") as scratch,
        moto_server() as primary,
        moto_server() as far,
    ):
        scratch_dir = Path(scratch)
        s3(primary.endpoint).create_bucket(Bucket=PRIMARY_BUCKET)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")},
            "BACKUP_ARTIFACTS_DIR": str(scratch_dir / "artifacts"),
            "BACKUP_S3_ENDPOINT_URL": primary.endpoint,
            "BACKUP_S3_BUCKET": PRIMARY_BUCKET,
            "BACKUP_S3_ACCESS_KEY": KEYS[0],
            "BACKUP_S3_SECRET_KEY": KEYS[1],
            "BENCH_ACCESS_KEY": KEYS[0],
            "BENCH_SECRET_KEY": KEYS[1],
            "DAGSTER_HOME": scratch,
        }
        stored = fill_primary(env, args.snapshots, args.mb)
        stores = Stores(scratch_dir, primary.endpoint, far.endpoint)
        with_stores = {**env, "BACKUP_STORES_FILE": str(stores.file)}

        def ours(store: str) -> Callable[[], tuple[float, int, int]]:
            def run() -> tuple[float, int, int]:
                stores.write()
                command = [str(CLI), "copy", "--store", store, "--json"]
                seconds, peak, out = timed(command, env=with_stores)
                [report] = json.loads(out)["stores"]
                assert report["up_to_date"], report
                stores.drop()
                return seconds, stored, peak

            return run

        def plain(mode: str, endpoint: str) -> Callable[[], tuple[float, int, int]]:
            def run() -> tuple[float, int, int]:
                names = stores.write()
                target = str(scratch_dir / names["disk"])
                if mode != "download":
                    target = names["near" if endpoint == primary.endpoint else "far"]
                argv = [primary.endpoint, endpoint, PRIMARY_BUCKET, target, mode, *KEYS]
                seconds, peak, _ = timed([sys.executable, "-c", PLAIN_COPY, *argv])
                stores.drop()
                return seconds, stored, peak

            return run

        copies = {
            "copy --store far (streamed)": ours("far"),
            "boto3 get + upload_fileobj": plain("streamed", far.endpoint),
            "copy --store near (by S3)": ours("near"),
            "boto3 client.copy": plain("server-side", primary.endpoint),
            "copy --store disk": ours("disk"),
            "boto3 download_file": plain("download", primary.endpoint),
        }
        rows = [(label, *median_of(args.repeat, run)) for label, run in copies.items()]
        backups = backup_rows(scratch_dir, env, with_stores, args.keys, args.repeat)

    print(
        f"{args.snapshots} snapshots of {args.mb} MB (random), {stored / 2**20:.0f} MiB stored, "
        f"{os.cpu_count()} cores, median of {args.repeat}; two moto servers on loopback"
    )
    print(f"{'':<32} {'seconds':>8} {'MiB/s':>7} {'peak RSS MiB':>13}")
    for label, seconds, moved, peak in rows:
        print(f"{label:<32} {seconds:>8.2f} {moved / 2**20 / seconds:>7.1f} {peak / 1024:>13.1f}")
    print(f"\nredis_backup asset, {args.keys} keys")
    print(f"{'':<32} {'wall s':>8} {'asset s':>8} {'peak RSS MiB':>13}")
    for label, wall, asset, peak in backups:
        print(f"{label:<32} {wall:>8.2f} {asset:>8.2f} {peak / 1024:>13.1f}")
    print(
        "the copy command's times include its start-up and reading every object back; "
        "'asset s' is the backup's own duration_s"
    )


def backup_rows(
    scratch: Path, env: dict[str, str], with_stores: dict[str, str], keys: int, repeat: int
) -> list[tuple[str, float, float, int]]:
    """The redis_backup asset without and with the stores file: wall, own duration, peak."""
    with redis_process(scratch / "redis") as client:
        fill(client, keys)
        port = str(client.connection_pool.connection_kwargs["port"])
        rows = []
        for label, base in (("no copy store", env), ("three copy stores", with_stores)):
            run_env = {**base, "BACKUP_REDIS_HOST": "127.0.0.1", "BACKUP_REDIS_PORT": port}
            runs = []
            for _ in range(repeat):
                command = [sys.executable, "-c", MATERIALIZE_CHILD, "redis_backup"]
                wall, peak, printed = timed(command, env=run_env)
                figures = json.loads(printed.strip().splitlines()[-1])
                runs.append((wall, figures["duration_s"], peak))
            runs.sort()
            rows.append((label, *runs[len(runs) // 2]))
    return rows


if __name__ == "__main__":
    main()
