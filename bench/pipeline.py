"""Throughput and peak memory of the snapshot pipeline next to the plain command-line tools.

    .venv/bin/python bench/pipeline.py [--size-mb 1024]

Builds one input file (half random, half repetitive, like a dump), then runs,
each in its own process on the same file: the pipeline (zstd, and zstd + age)
into a staging directory, `zstd -T0 -3`, and `gzip -6`. Prints wall time,
throughput, output size and peak RSS side by side.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import timed  # noqa: E402

from backup_pipelines_tests.memory_probe import generated_chunks  # noqa: E402

PIPELINE_CHILD = """
import sys
import time
from pathlib import Path
from pyrage import x25519
from backup_pipelines.snapshot.staging import stage
recipients = [x25519.Identity.generate().to_public()] if sys.argv[3] == "age" else []
started = time.monotonic()
with stage(Path(sys.argv[2]), "bench", "bench-run", recipients=recipients) as staged:
    staged.add_file("input", Path(sys.argv[1]))
print(staged.files[0].size, time.monotonic() - started)
"""


def pipeline_run(source: Path, staging: Path, mode: str) -> tuple[float, int, int]:
    seconds, rss, printed = timed(
        [sys.executable, "-c", PIPELINE_CHILD, str(source), str(staging), mode]
    )
    output_size, streaming_seconds = printed.split()
    print(
        f"  pipeline {mode}: {seconds:.2f} s with interpreter start-up, "
        f"{float(streaming_seconds):.2f} s streaming"
    )
    shutil.rmtree(staging)
    return seconds, int(output_size), rss


def tool_run(command: list[str], target: Path) -> tuple[float, int, int]:
    seconds, rss, _ = timed(command, stdout_path=target)
    size = target.stat().st_size
    target.unlink()
    return seconds, size, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the median counts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch:
        scratch_dir = Path(scratch)
        source = scratch_dir / "input.bin"
        with source.open("wb") as out:
            for chunk in generated_chunks(args.size_mb):
                out.write(chunk)
        size = source.stat().st_size
        target = scratch_dir / "out"
        contenders = {
            "pipeline zstd": lambda: pipeline_run(source, scratch_dir / "staging", "plain"),
            "pipeline zstd+age": lambda: pipeline_run(source, scratch_dir / "staging", "age"),
            "zstd -T0 -3": lambda: tool_run(["zstd", "-T0", "-3", "-c", str(source)], target),
            "gzip -6": lambda: tool_run(["gzip", "-6", "-c", str(source)], target),
        }
        rows = []
        for label, run in contenders.items():
            runs = [run() for _ in range(args.repeat)]
            seconds = statistics.median(r[0] for r in runs)
            rows.append((label, seconds, runs[-1][1], max(r[2] for r in runs)))

    print(f"input: {size / 2**20:.0f} MiB, {os.cpu_count()} cores, median of {args.repeat} runs")
    print(
        f"{'tool':<20} {'seconds':>8} {'MiB/s':>8} {'output MiB':>11} {'ratio':>6} "
        f"{'peak RSS MiB':>13}"
    )
    for label, seconds, output, rss in rows:
        print(
            f"{label:<20} {seconds:>8.2f} {size / 2**20 / seconds:>8.0f} "
            f"{output / 2**20:>11.1f} {size / output:>6.2f} {rss / 1024:>13.1f}"
        )


if __name__ == "__main__":
    main()
