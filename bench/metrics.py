"""What a Prometheus scrape of `backup-pipelines metrics --listen` costs against a store with
thousands of snapshots, next to the least any tool must read.

    .venv/bin/python bench/metrics.py [--snapshots 3000] [--s3-snapshots 500] [--scrapes 5]

Fills a local store and a bucket of moto's S3 server as `store_listing.py`
does, starts the exporter, and times the first scrape (every manifest read)
and the median of the following ones (a listing per source, only new
manifests read), with the exporter's peak RSS. Beside them: reading every
manifest once, the floor of any listing, and `--textfile` (one process that
reads everything, as a cron job would).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import print_table, timed
from store_listing import BOTO_FLOOR, KEYS, ROOT, fill_local, fill_s3, moto_endpoint, s3_env

sys.path.insert(0, str(ROOT))
from backup_pipelines_tests.conftest import free_port, wait_for_port

CLI = [sys.executable, "-m", "backup_pipelines.cli"]


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def scrape_rows(env: dict[str, str], floor: list[str], scrapes: int, scratch: Path) -> list:
    port = free_port()
    exporter = subprocess.Popen(
        [*CLI, "metrics", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for_port(port)  # a GET would be the first scrape

        def scrape() -> float:
            started = time.monotonic()
            requests.get(url, timeout=600).raise_for_status()
            return time.monotonic() - started

        first = scrape()
        later = statistics.median(scrape() for _ in range(scrapes))
        peak = peak_rss_kib(exporter.pid)
    finally:
        exporter.terminate()
        exporter.wait(timeout=60)
    once = [*CLI, "metrics", "--textfile", str(scratch / "backup.prom")]
    textfile, textfile_peak, _ = timed(once, env=env)
    floor_seconds, floor_peak, _ = timed(floor, env=env, stdout_path=Path(os.devnull))
    return [
        ("scrape, first (cold)", first, 0, peak),
        (f"scrape, median of next {scrapes}", later, 0, peak),
        ("metrics --textfile", textfile, 0, textfile_peak),
        ("every manifest read once", floor_seconds, 0, floor_peak),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=3000)
    parser.add_argument("--s3-snapshots", type=int, default=500)
    parser.add_argument("--scrapes", type=int, default=5)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("BACKUP_")}

    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as scratch:
        root = Path(scratch) / "artifacts"
        fill_local(root, args.snapshots)
        env = {**base, "BACKUP_ARTIFACTS_DIR": str(root)}
        floor = ["sh", "-c", f"find {root} -name manifest.json -exec cat {{}} +"]
        print_table(
            f"local store, {args.snapshots} snapshots",
            scrape_rows(env, floor, args.scrapes, Path(scratch)),
        )

        with moto_endpoint() as endpoint:
            fill_s3(endpoint, "bench-metrics", args.s3_snapshots)
            env |= s3_env(endpoint, "bench-metrics")
            floor = [sys.executable, "-c", BOTO_FLOOR, endpoint, "bench-metrics", *KEYS.values()]
            print_table(
                f"moto's S3 server, {args.s3_snapshots} snapshots",
                scrape_rows(env, floor, args.scrapes, Path(scratch)),
            )


if __name__ == "__main__":
    main()
