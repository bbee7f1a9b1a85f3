"""Listing a store that holds many snapshots, next to the least any tool must read.

    .venv/bin/python bench/store_listing.py [--snapshots 3000] [--s3-snapshots 500] [--repeat 3]

Fills a local store, a bucket of moto's S3 server, and a bucket with S3
Object Lock whose every object is locked, with snapshots of one small
artifact each (as hourly backups accumulate), then, each in its own process:
`backup-pipelines snapshots --json`, `backup-pipelines prune --dry-run
--json` (in the locked bucket it looks up the lock of every object it would
delete), and the floor every listing pays, reading every manifest once
(`find -name manifest.json -exec cat` on disk; a bare boto3 loop that lists
the keys and GETs each manifest in S3). Prints the median time and peak RSS
of each.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import median_of, print_table, timed  # noqa: E402

from backup_pipelines.snapshot.manifest import FileEntry, Manifest, new_snapshot_id  # noqa: E402
from backup_pipelines.storage.names import split_source  # noqa: E402
from backup_pipelines_tests.conftest import free_port, wait_for_http  # noqa: E402

SOURCE = "redis"
ARTIFACT = b"\x28\xb5\x2f\xfd" + os.urandom(2000)  # a zstd magic and 2 kB: contents do not matter
KEYS = {"access": "bench-access-key", "secret": "bench-secret-key"}
BOTO_FLOOR = """
import sys, boto3
client = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                      aws_access_key_id=sys.argv[3], aws_secret_access_key=sys.argv[4])
pages = client.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[2], Prefix="backups/")
for page in pages:
    for item in page.get("Contents", []):
        if item["Key"].endswith("/manifest.json"):
            client.get_object(Bucket=sys.argv[2], Key=item["Key"])["Body"].read()
"""


def snapshots(count: int, source: str = SOURCE) -> list[tuple[str, bytes]]:
    """(id, manifest bytes) of `count` hourly snapshots of `source` back from now."""
    kind, target = split_source(source)
    entry = FileEntry(
        name="dump.rdb.zst", size=len(ARTIFACT), sha256=hashlib.sha256(ARTIFACT).hexdigest()
    )
    newest = datetime.now(UTC).replace(microsecond=0)
    made = []
    for n in range(count):
        started = newest - timedelta(hours=n)
        snapshot_id = new_snapshot_id(f"{n:08x}", started)
        manifest = Manifest(
            source=source,
            kind=kind,
            target=target,
            snapshot_id=snapshot_id,
            started_at=started,
            finished_at=started + timedelta(seconds=5),
            run_id=f"{n:08x}-bench",
            files=[entry],
        )
        made.append((snapshot_id, manifest.to_bytes()))
    return made


def fill_local(root: Path, count: int) -> None:
    for snapshot_id, manifest in snapshots(count):
        directory = root / SOURCE / snapshot_id
        directory.mkdir(parents=True)
        (directory / "dump.rdb.zst").write_bytes(ARTIFACT)
        (directory / "manifest.json").write_bytes(manifest)


def fill_s3(
    endpoint: str, bucket: str, count: int, locked: bool = False, sources: Sequence[str] = (SOURCE,)
) -> None:
    """`count` snapshots of each of `sources` in a new bucket."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEYS["access"],
        aws_secret_access_key=KEYS["secret"],
    )
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=locked)
    lock = {}
    if locked:
        until = datetime.now(UTC) + timedelta(days=1)
        lock = {"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": until}
    for source in sources:
        for snapshot_id, manifest in snapshots(count, source):
            prefix = f"backups/{source}/{snapshot_id}"
            client.put_object(Bucket=bucket, Key=f"{prefix}/dump.rdb.zst", Body=ARTIFACT, **lock)
            client.put_object(Bucket=bucket, Key=f"{prefix}/manifest.json", Body=manifest, **lock)


@contextmanager
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, for the length of the block."""
    port = free_port()
    moto_server = str(Path(sys.executable).with_name("moto_server"))
    moto = subprocess.Popen(
        [moto_server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_for_http(endpoint)
        yield endpoint
    finally:
        moto.terminate()
        moto.wait(timeout=60)


def s3_env(endpoint: str, bucket: str) -> dict[str, str]:
    """The BACKUP_* variables of the bench's bucket."""
    return {
        "BACKUP_S3_ENDPOINT_URL": endpoint,
        "BACKUP_S3_BUCKET": bucket,
        "BACKUP_S3_ACCESS_KEY": KEYS["access"],
        "BACKUP_S3_SECRET_KEY": KEYS["secret"],
    }


def command_rows(env: dict[str, str], floor: list[str], repeat: int) -> list[tuple]:
    cli = [sys.executable, "-m", "backup_pipelines.cli"]

    def run(command: list[str]):
        def once() -> tuple[float, int, int]:
            seconds, peak, _ = timed(command, env=env, stdout_path=Path(os.devnull))
            return seconds, 0, peak

        return once

    return [
        ("snapshots --json", *median_of(repeat, run([*cli, "snapshots", "--json"]))),
        ("prune --dry-run --json", *median_of(repeat, run([*cli, "prune", "--dry-run", "--json"]))),
        ("every manifest read once", *median_of(repeat, run(floor))),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=3000)
    parser.add_argument("--s3-snapshots", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}

    with tempfile.TemporaryDirectory(prefix="bench-listing-") as scratch:
        root = Path(scratch) / "artifacts"
        fill_local(root, args.snapshots)
        env = {**base, "BACKUP_ARTIFACTS_DIR": str(root)}
        floor = ["sh", "-c", f"find {root} -name manifest.json -exec cat {{}} +"]
        print_table(
            f"local store, {args.snapshots} snapshots, median of {args.repeat}",
            command_rows(env, floor, args.repeat),
        )

        with moto_endpoint() as endpoint:
            fill_s3(endpoint, "bench-listing", args.s3_snapshots)
            env |= s3_env(endpoint, "bench-listing")
            floor = [sys.executable, "-c", BOTO_FLOOR, endpoint, "bench-listing", *KEYS.values()]
            print_table(
                f"moto's S3 server, {args.s3_snapshots} snapshots, median of {args.repeat}",
                command_rows(env, floor, args.repeat),
            )
            fill_s3(endpoint, "bench-locked", args.s3_snapshots, locked=True)
            env["BACKUP_S3_BUCKET"] = "bench-locked"
            floor = [sys.executable, "-c", BOTO_FLOOR, endpoint, "bench-locked", *KEYS.values()]
            print_table(
                f"moto's S3 server, Object Lock on every object, {args.s3_snapshots} snapshots, "
                f"median of {args.repeat}",
                command_rows(env, floor, args.repeat),
            )


if __name__ == "__main__":
    main()
