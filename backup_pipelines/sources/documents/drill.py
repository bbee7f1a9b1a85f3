"""Proving a documents snapshot restorable without restoring the whole tree.

`restic check --read-data-subset` reads a share of the repository's packs;
the snapshot's listing must hold as many files and bytes as restic counted
when it took the snapshot; and a sample of files, chosen by a hash of their
paths (so each run samples others across snapshots, and never by chance
only small ones), is restored into scratch space, each file's content
checked by restic and its size compared with the listing. Every restic
command here reads without a lock, so read-only store credentials suffice.
"""

from __future__ import annotations

import hashlib
import heapq
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from backup_pipelines.errors import BackupError
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.sources.documents.restic import ResticRepository
from backup_pipelines.sources.documents.restore import restic_id_of
from backup_pipelines.sources.source import DrillResult, Log

SAMPLE_FILES = 20


def sample(files: Iterable[tuple[str, int]], salt: str) -> tuple[int, int, list[tuple[str, int]]]:
    """Files counted, bytes summed, and `SAMPLE_FILES` of them picked, in one pass and bounded
    memory, however large the tree."""
    count, total, chosen = 0, 0, []
    for path, size in files:
        count, total = count + 1, total + size
        rank = -int.from_bytes(hashlib.sha256(f"{salt}{path}".encode()).digest()[:8], "big")
        entry = (rank, path, size)
        if len(chosen) < SAMPLE_FILES:
            heapq.heappush(chosen, entry)
        elif entry > chosen[0]:
            heapq.heapreplace(chosen, entry)
    return count, total, [(path, size) for _, path, size in sorted(chosen)]


def restore_sample(
    repository: ResticRepository, restic_id: str, chosen: list[tuple[str, int]], work_dir: Path
) -> list[str]:
    """Restore the chosen files into scratch space; what did not come back as listed."""
    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="documents-"))
    try:
        repository.restore(restic_id, str(scratch), [path for path, _ in chosen], lock=False)
        return restored_sample_problems(scratch, chosen)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def restored_sample_problems(restored: Path, chosen: list[tuple[str, int]]) -> list[str]:
    problems = []
    for path, size in chosen:
        relative = PurePosixPath(path)
        if not relative.is_absolute() or ".." in relative.parts:
            problems.append(f"the snapshot lists a file at {path!r}, not a path restic restores")
            continue
        file = restored.joinpath(*relative.parts[1:])
        if not file.is_file() or file.is_symlink():
            problems.append(f"{path} did not come back")
        elif file.stat().st_size != size:
            problems.append(f"{path} came back with {file.stat().st_size} bytes, not {size}")
    return problems


def drill_tree(
    reader: SnapshotReader, repository: ResticRepository, read_data_subset: str, log: Log
) -> DrillResult:
    snapshot = reader.snapshot
    stats = snapshot.manifest.stats
    try:
        restic_id = restic_id_of(snapshot)
        log(f"restic check of {repository.location}, reading {read_data_subset} of its data")
        repository.check(read_data_subset, lock=False)
        files, size, chosen = sample(repository.files(restic_id), snapshot.snapshot_id)
        counted = {
            "files": (files, "total_files_processed"),
            "bytes": (size, "total_bytes_processed"),
        }
        problems = [
            f"the snapshot lists {found} {what}, restic counted {stats[key]} at backup"
            for what, (found, key) in counted.items()
            if key in stats and stats[key] != found
        ]
        if chosen:
            log(f"restoring a sample of {len(chosen)} files of {restic_id}")
            problems += restore_sample(repository, restic_id, chosen, reader.work_dir)
    except BackupError as exc:
        return DrillResult([str(exc)])
    figures = {
        "files": files,
        "bytes": size,
        "sample_files": len(chosen),
        "sample_bytes": sum(size for _, size in chosen),
        "read_data_subset": read_data_subset,
    }
    return DrillResult(problems, figures)
