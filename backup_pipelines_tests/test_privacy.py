"""Backups are private by default: a fresh local store and artifacts directory (staging, outbox)
are open to their owner alone (or also to `BACKUP_STORE_GROUP`), and one found more open is
reported by `verify` and the metrics."""

from __future__ import annotations

import grp
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_pipelines.cli import main
from backup_pipelines.processes import as_os_user
from backup_pipelines_tests.conftest import commit_snapshot, runtime_from_env
from backup_pipelines_tests.test_metrics import metrics_file

SECRET = b"CREATE ROLE crm PASSWORD 'SCRAM-SHA-256$4096:...';\n"


@pytest.fixture
def open_parent(backup_env, monkeypatch) -> Iterator[Path]:
    """The artifacts directory inside a folder every local user may enter (pytest's own
    tmp_path is closed to others, which would hide what is being tested)."""
    parent = Path(tempfile.mkdtemp(prefix="privacy-"))
    parent.chmod(0o755)
    monkeypatch.setenv("BACKUP_ARTIFACTS_DIR", str(parent / "artifacts"))
    try:
        yield parent / "artifacts"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_fresh_store_is_private_and_one_found_open_is_reported(open_parent, tmp_path, capsys):
    runtime = runtime_from_env()
    commit_snapshot(runtime.store, runtime.staging.directory, {"globals.sql": SECRET})
    stored = [path for path in open_parent.rglob("*") if path.is_file()]
    assert mode_of(open_parent) == 0o700 and stored
    assert all(not mode_of(path) & 0o007 for path in stored)
    as_nobody = subprocess.run(
        ["cat", str(stored[0])], **as_os_user("nobody"), capture_output=True, text=True
    )
    assert as_nobody.returncode != 0 and "Permission denied" in as_nobody.stderr
    assert main(["verify", "postgres"]) == 0
    assert metrics_file(tmp_path)["backup_store_private"] == {"": 1.0}

    open_parent.chmod(0o755)
    assert main(["verify", "postgres"]) == 1
    assert f"{open_parent} (mode 0755) is open to every local user: chmod 700" in (
        capsys.readouterr().err
    )
    assert metrics_file(tmp_path)["backup_store_private"] == {"": 0.0}
    assert mode_of(open_parent) == 0o755  # the operator decides


def test_a_store_group_reads_the_store_and_no_one_else_does(open_parent, monkeypatch):
    monkeypatch.setenv("BACKUP_STORE_GROUP", "nogroup")
    runtime = runtime_from_env()
    commit_snapshot(runtime.store, runtime.staging.directory, {"globals.sql": SECRET})
    assert mode_of(open_parent) == 0o2750
    assert open_parent.stat().st_gid == grp.getgrnam("nogroup").gr_gid
    assert main(["verify", "postgres"]) == 0
    monkeypatch.setenv("BACKUP_STORE_GROUP", "no-such-group-here")
    shutil.rmtree(open_parent)
    assert main(["verify", "postgres"]) == 2
