"""The documents_backup asset next to bare `restic backup`, first and second (1% changed) runs.

    .venv/bin/python bench/documents.py [--files 20000] [--big-mb 200]

Builds one tree (many small files and one big file), then in one run, each
in its own process: the asset's first backup (new repository), bare
`restic backup` into a repository of its own (its first run including
`restic init`, as the asset's first run does), a 1% change to the tree,
and both second backups. Prints time, bytes added to the repository and
peak RSS side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import materialize_asset, print_table, timed

PASSWORD = "bench-password"


def build_tree(root: Path, files: int, big_mb: int) -> None:
    rng = random.Random(5)
    for n in range(files):
        folder = root / f"client-{n % 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"contract-{n}.txt").write_bytes(rng.randbytes(rng.randint(500, 20_000)))
    with (root / "archive.bin").open("wb") as out:
        for _ in range(big_mb):
            out.write(rng.randbytes(1 << 20))


def change_one_percent(root: Path) -> None:
    for path in sorted(root.rglob("*.txt"))[::100]:
        with path.open("ab") as out:
            out.write(os.urandom(1000))


def bare_restic(root: Path, repository: Path, init: bool = False) -> tuple[float, int, int]:
    """restic alone; the first run includes `restic init`, as the asset's first run does."""
    env = {**os.environ, "RESTIC_REPOSITORY": str(repository), "RESTIC_PASSWORD": PASSWORD}
    command = f"{'restic init -q && ' if init else ''}restic backup --json '{root}'"
    seconds, peak, out = timed(["sh", "-c", command], env=env)
    summary = [json.loads(line) for line in out.splitlines() if '"summary"' in line][-1]
    return seconds, summary["data_added"], peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--big-mb", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-documents-") as scratch:
        scratch_dir = Path(scratch)
        root = scratch_dir / "documents"
        build_tree(root, args.files, args.big_mb)
        env = {
            **os.environ,
            "BACKUP_ARTIFACTS_DIR": str(scratch_dir / "artifacts"),
            "BACKUP_DOCUMENTS_ROOT": str(root),
            "BACKUP_RESTIC_PASSWORD": PASSWORD,
            "DAGSTER_HOME": scratch,
        }
        bare_repository = scratch_dir / "bare-repo"
        rows = [
            ("asset, first backup", *materialize_asset("documents_backup", env, "data_added")),
            ("restic init + backup, first", *bare_restic(root, bare_repository, init=True)),
        ]
        change_one_percent(root)
        rows += [
            (
                "asset, second (1% changed)",
                *materialize_asset("documents_backup", env, "data_added"),
            ),
            ("restic backup, second", *bare_restic(root, bare_repository)),
        ]
    print_table(
        f"{args.files} files + {args.big_mb} MiB file, {os.cpu_count()} cores "
        "(output = bytes the run added to the store)",
        rows,
    )
    print("asset time is its duration_s metadata (restic, summary artifact, commit)")


if __name__ == "__main__":
    main()
