"""Measuring commands the same way in every bench: wall time, peak RSS, medians."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

Run = Callable[[], tuple[float, int, int]]  # seconds, output bytes, peak RSS KiB

MATERIALIZE_CHILD = """
import json, sys
from dagster import AssetKey, DagsterInstance, materialize
from backup_pipelines.dagster_defs.backup_location import build_definitions
from backup_pipelines.runtime import load_runtime
defs = build_definitions(load_runtime())
asset = defs.resolve_assets_def(AssetKey(sys.argv[1]))
result = materialize([asset], instance=DagsterInstance.ephemeral())
[event] = result.asset_materializations_for_node(sys.argv[1])
print(json.dumps({key: value.value for key, value in event.metadata.items()}, default=str))
"""


def timed(
    command: list[str], env: Mapping[str, str] | None = None, stdout_path: Path | None = None
) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in KiB, and stdout of one command.

    Peak RSS comes from GNU time, whose own small process forks the command:
    a child forked straight from this (large) Python process would inherit
    its memory high-water mark and overstate small tools.
    """
    os.sync()  # earlier runs' dirty pages must not slow this one's writes
    with tempfile.NamedTemporaryFile("r") as report:
        out = stdout_path.open("wb") if stdout_path else subprocess.PIPE
        started = time.monotonic()
        result = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", report.name, *command],
            stdout=out,
            env=dict(env) if env else None,
            check=True,
        )
        elapsed = time.monotonic() - started
        if stdout_path:
            out.close()
        peak_kib = int(report.read().split()[-1])
    return elapsed, peak_kib, result.stdout.decode() if result.stdout else ""


def materialize_asset(
    asset_name: str, env: Mapping[str, str], size_key: str = "size_bytes"
) -> tuple[float, int, int]:
    """The asset's own snapshot time (its duration_s metadata), a size figure and peak RSS."""
    _, peak, printed = timed([sys.executable, "-c", MATERIALIZE_CHILD, asset_name], env=env)
    figures = json.loads(printed.strip().splitlines()[-1])
    return figures["duration_s"], figures[size_key], peak


def median_of(repeat: int, run: Run) -> tuple[float, int, int]:
    """Median seconds, the last run's output size, the largest peak RSS."""
    runs = [run() for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), runs[-1][1], max(r[2] for r in runs)


def print_table(title: str, rows: list[tuple[str, float, int, int]]) -> None:
    print(title)
    print(f"{'':<30} {'seconds':>8} {'output MiB':>11} {'peak RSS MiB':>13}")
    for label, seconds, output, peak in rows:
        shown = f"{output / 2**20:>11.1f}" if output else f"{'':>11}"
        print(f"{label:<30} {seconds:>8.2f} {shown} {peak / 1024:>13.1f}")
