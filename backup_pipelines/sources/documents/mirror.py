"""restic's repository copied into a copy store, file by file, byte for byte.

restic names every file by its content (packs, indexes, snapshots), so a
file the copy holds under the same name holds the same bytes: only what it
lacks goes, each read back. The copy keeps restic's own write ordering,
packs before the indexes that name them, those before the snapshots that
use them, so a copy cut midway leaves only more packs than needed. The copy
gets the restic snapshots of the documents snapshots it holds or is about
to hold, never others (one its retention dropped does not come back), and
never lock files.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

from backup_pipelines.storage import Backend
from backup_pipelines.storage.names import check_artifact_name
from backup_pipelines.storage.transfer import copy_proven

ORDER = ("data", "index", "keys", "config", "snapshots")
"""restic's folders (and its config file) in the order a writer makes them."""
SKIPPED = ("locks",)


def copy_repository(
    source: Backend, target: Backend, repository: str, restic_ids: Collection[str]
) -> int:
    """The repository at key `repository` of `source` into `target`: every pack, index and
    key `target` lacks, and the snapshots `restic_ids` name (short or full ids). How many
    files went."""
    theirs = set(_files(target, repository))
    copied = 0
    for relative in sorted(_files(source, repository), key=_rank):
        top, _, name = relative.partition("/")
        if relative in theirs or top in SKIPPED:
            continue
        if top == "snapshots" and not any(name.startswith(short) for short in restic_ids):
            continue
        copy_proven(source, target, f"{repository}/{relative}")
        copied += 1
    return copied


def _rank(relative: str) -> tuple[int, str]:
    top = relative.split("/", 1)[0]
    return (ORDER.index(top) if top in ORDER else len(ORDER), relative)


def _files(backend: Backend, prefix: str) -> Iterator[str]:
    """Every file below `prefix`, as a path relative to it (names checked, as any listing).
    A store may list a folder's files among its children too: those are not folders."""
    files = [check_artifact_name(name) for name in backend.files(f"{prefix}/")]
    yield from files
    for folder in set(backend.children(f"{prefix}/")) - set(files):
        for below in _files(backend, f"{prefix}/{check_artifact_name(folder)}"):
            yield f"{folder}/{below}"
