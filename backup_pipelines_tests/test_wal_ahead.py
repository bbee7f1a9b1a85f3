"""WAL pushed ahead of PostgreSQL's asking: a helper drains a backlog in parallel while the
archiver goes on, and a segment is answered 0 at once only when the archive's listing showed it
stored with that very content."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from backup_pipelines.cli import main
from backup_pipelines.storage.layout import WAL_ARCHIVE
from backup_pipelines.wal import ahead
from backup_pipelines.wal.archive import WalArchive
from backup_pipelines_tests.archiving_cluster import COMMAND
from backup_pipelines_tests.conftest import make_s3_store, store_from_env
from backup_pipelines_tests.tcp_proxy import CuttingProxy


def backlog(root: Path, count: int, mib: int) -> list[Path]:
    """`count` segments in a pg_wal of `root`, each waiting to be archived (`.ready`)."""
    wal = root / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    segments = []
    for number in range(1, count + 1):
        segment = wal / f"0000000100000000{number:08X}"
        segment.write_bytes(os.urandom(mib << 20))
        (wal / "archive_status" / f"{segment.name}.ready").touch()
        segments.append(segment)
    return segments


def archived(archive: WalArchive) -> dict[str, str]:
    """Name → sha256 of every segment the archive lists."""
    listed = [held for folder in archive.folders() for held in archive.files(folder)]
    return {held.name: held.sha256 for held in listed}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def markers(target: str | None = None) -> dict[str, str]:
    """Segment → sha256 of every marker of segments pushed ahead."""
    spool = ahead.spool_dir(target)
    assert spool is not None
    found = [marker for marker in Path(spool).iterdir() if ahead.is_segment_name(marker.name)]
    return {marker.name: marker.read_text().split()[-1] for marker in found}


def helper_done(target: str | None = None, timeout_s: float = 120) -> None:
    """Until no helper holds the spool's lock."""
    spool = ahead.spool_dir(target)
    deadline = time.monotonic() + timeout_s
    while ahead.helper_running(spool):
        assert time.monotonic() < deadline, "the helper did not finish"
        time.sleep(0.05)


def helper_pid(target: str | None = None, timeout_s: float = 30) -> int:
    """The running helper's pid, as it wrote it in the spool's lock."""
    lock = Path(ahead.spool_dir(target), ahead.HELPER_LOCK)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        written = lock.read_text().strip() if lock.exists() else ""
        if written:
            return int(written)
        time.sleep(0.01)
    raise AssertionError("no helper wrote its pid")


def full_command(argv):
    raise AssertionError(f"the full command ran for {argv}")


def test_a_backlog_is_pushed_ahead_and_each_segment_answered_at_once(
    backup_env, tmp_path, monkeypatch
):
    segments = backlog(tmp_path, 6, 1)
    assert main(["wal-push", str(segments[0])]) == 0  # its own segment: the helper goes on
    with monkeypatch.context() as patched:
        patched.setattr("backup_pipelines.cli.wal.main", full_command)
        assert main(["wal-push", str(segments[1])]) == 0  # waited for the helper's marker
    helper_done()
    archive = WalArchive(store_from_env().backend, WAL_ARCHIVE)
    assert archived(archive) == {segment.name: sha256_of(segment) for segment in segments}
    assert markers() == {segment.name: sha256_of(segment) for segment in segments[2:]}

    with monkeypatch.context() as patched:
        patched.setattr("backup_pipelines.cli.wal.main", full_command)
        for segment in segments[2:4]:
            assert main(["wal-push", str(segment)]) == 0  # answered from the marker alone
    assert set(markers()) == {segment.name for segment in segments[4:]}

    segments[4].write_bytes(os.urandom(1 << 20))  # not what was pushed ahead: never answered 0
    assert main(["wal-push", str(segments[4])]) == 1
    assert archived(archive)[segments[4].name] != sha256_of(segments[4])


@pytest.mark.slow
def test_a_helper_killed_midway_leaves_markers_only_for_what_the_archive_holds(
    backup_env, tmp_path
):
    segments = backlog(tmp_path, 12, 8)
    archive = WalArchive(store_from_env().backend, WAL_ARCHIVE)
    subprocess.run([str(COMMAND), "wal-push", str(segments[0])], check=True)
    helper = helper_pid()
    while len(archived(archive)) < 3 and ahead.helper_running(ahead.spool_dir(None)):
        time.sleep(0.01)
    os.kill(helper, signal.SIGKILL)  # two pushed ahead, the next ones on their way
    helper_done()
    held = archived(archive)
    assert all(held.get(name) == sha256 for name, sha256 in markers().items())
    assert len(held) < len(segments), "the helper ended before it was killed: no test"

    for segment in segments:  # PostgreSQL asks again for each, in order
        done = subprocess.run([str(COMMAND), "wal-push", str(segment)], check=False)
        assert done.returncode == 0, segment.name
    helper_done()
    assert archived(archive) == {segment.name: sha256_of(segment) for segment in segments}


@pytest.mark.slow
def test_a_store_cut_midway_marks_nothing_it_does_not_hold(
    s3_env, s3_endpoint, s3_bucket, tmp_path, monkeypatch
):
    segments = backlog(tmp_path, 10, 4)
    cut_after = 20 << 20  # of 40 MiB: some segments get through, the others are cut
    proxy = CuttingProxy(int(s3_endpoint.rsplit(":", 1)[1]), cut_after=cut_after)
    monkeypatch.setenv("BACKUP_S3_ENDPOINT_URL", proxy.url)
    try:
        subprocess.run([str(COMMAND), "wal-push", str(segments[0])], check=False, timeout=120)
        helper_done()
        assert proxy.sent > cut_after, "the store was never cut: no test"
    finally:
        proxy.close()
    direct = WalArchive(make_s3_store(s3_endpoint, s3_bucket).backend, WAL_ARCHIVE)
    held = archived(direct)
    assert all(held.get(name) == sha256 for name, sha256 in markers().items())
    assert len(markers()) < len(segments) - 1
