"""Documents with restic: incremental backups of a real tree, restored exactly, on both stores."""

import hashlib
import json
import os
import random
import stat
import time
from pathlib import Path

import pytest

from backup_pipelines.cli import main
from backup_pipelines_tests.conftest import (
    checks_of,
    failed_at_once,
    metadata_of,
    read_manifest_bytes,
    replace_manifest,
    run_backup,
    run_job,
    run_verification,
    runtime_from_env,
    store_from_env,
    verification_of,
)

RESTIC_PASSWORD = "restic-pw-never-shown"


def build_tree(root: Path) -> None:
    """2,500 files: unicode names, nesting, empty file and dir, symlink, modes, a 30 MB one."""
    rng = random.Random(3)
    for n in range(2500):
        folder = root / f"клиенты-{n % 25:02d}" / f"年-{n % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"договор №{n} — ü.txt").write_bytes(rng.randbytes(rng.randint(50, 3000)))
    (root / "empty.txt").touch()
    (root / "empty-dir" / "nested-empty").mkdir(parents=True)
    (root / "secret.key").write_text("private")
    (root / "secret.key").chmod(0o600)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "latest-contract").symlink_to("клиенты-01/年-1/договор №1 — ü.txt")
    (root / "scan.pdf").write_bytes(rng.randbytes(30 << 20))


def change_one_percent(root: Path) -> None:
    files = sorted(p for p in root.rglob("*.txt") if p.stat().st_size)
    for path in files[::100]:
        with path.open("ab") as out:
            out.write(b" appended")
    files[1].unlink()
    (root / "клиенты-00" / "new contract.txt").write_text("new")


def tree_state(root: Path) -> dict[str, tuple]:
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = ("link", os.readlink(path))
        elif path.is_dir():
            state[key] = ("dir", mode)
        else:
            state[key] = ("file", mode, hashlib.sha256(path.read_bytes()).hexdigest())
    state["."] = ("dir", stat.S_IMODE(root.stat().st_mode))
    return state


@pytest.fixture
def documents_root(store_env, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "documents"
    build_tree(root)
    monkeypatch.setenv("BACKUP_DOCUMENTS_ROOT", str(root))
    monkeypatch.setenv("BACKUP_RESTIC_PASSWORD", RESTIC_PASSWORD)
    return root


@pytest.mark.slow
def test_incremental_backups_restore_each_tree_exactly(documents_root, tmp_path, capsys):
    first_state = tree_state(documents_root)
    first = run_backup("documents")
    assert first.success
    assert checks_of(first)["integrity"].passed
    first_meta = metadata_of(first, "documents")
    drilled = verification_of(run_verification("documents"), "documents")
    assert drilled["passed"] and drilled["problems"] == []
    assert (drilled["files"], drilled["sample_files"]) == (2504, 20)
    assert drilled["bytes"] > 30 << 20
    assert first_meta["files_new"] == 2504 and first_meta["data_added"] > 30 << 20
    assert first_meta["size_bytes"] > first_meta["data_added"]  # not restic's pointer alone
    assert first_meta["size"].endswith("MiB")

    change_one_percent(documents_root)
    second_state = tree_state(documents_root)
    second = run_backup("documents")
    assert second.success
    second_meta = metadata_of(second, "documents")
    assert second_meta["files_changed"] == 25 and second_meta["files_new"] == 1
    assert second_meta["data_added"] < first_meta["data_added"] / 50

    for meta, state in ((first_meta, first_state), (second_meta, second_state)):
        target = tmp_path / f"restored-{meta['snapshot_id']}"
        command = [
            "restore",
            "documents",
            "--snapshot",
            meta["snapshot_id"],
            "--target-dir",
            str(target),
        ]
        assert main(command) == 0
        assert tree_state(target) == state
    assert main(["verify", "documents", "--deep"]) == 0
    output = capsys.readouterr()
    assert RESTIC_PASSWORD not in output.out + output.err
    every_log = " ".join(str(e.message) for e in first.all_events + second.all_events)
    assert RESTIC_PASSWORD not in every_log


@pytest.mark.slow
def test_restore_refuses_a_non_empty_directory_without_force(
    documents_root, tmp_path, capsys, monkeypatch
):
    assert run_backup("documents").success
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    assert main(["restore", "documents", "--target-dir", str(target)]) == 1
    assert "is not empty; add --force" in capsys.readouterr().err
    assert (target / "keep.txt").read_text() == "mine"
    assert main(["restore", "documents", "--target-dir", str(target), "--force"]) == 0
    assert tree_state(target) == tree_state(documents_root)

    from_dagster = tmp_path / "from-dagster"
    monkeypatch.setenv("BACKUP_RESTORE_ROOTS", str(tmp_path))
    config = {"source": "documents", "target": str(from_dagster)}
    result = run_job("restore_job", run_config={"ops": {"restore_snapshot": {"config": config}}})
    assert result.success
    assert tree_state(from_dagster) == tree_state(documents_root)


def test_missing_password_or_root_is_a_configuration_error(backup_env, tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUP_DOCUMENTS_ROOT", str(tmp_path))
    assert "BACKUP_RESTIC_PASSWORD is required" in failed_at_once(run_backup("documents"))
    monkeypatch.setenv("BACKUP_RESTIC_PASSWORD", RESTIC_PASSWORD)
    monkeypatch.setenv("BACKUP_DOCUMENTS_ROOT", str(tmp_path / "nowhere"))
    assert "BACKUP_DOCUMENTS_ROOT" in failed_at_once(run_backup("documents"), RESTIC_PASSWORD)
    assert store_from_env().list_snapshots("documents") == []


@pytest.mark.slow
def test_a_wrong_password_never_initialises_a_second_repository(documents_root, monkeypatch):
    assert run_backup("documents").success
    monkeypatch.setenv("BACKUP_RESTIC_PASSWORD", "not-the-password")
    message = failed_at_once(run_backup("documents"), "not-the-password")
    assert "BACKUP_RESTIC_PASSWORD does not open the restic repository" in message
    assert len(store_from_env().list_snapshots("documents")) == 1


@pytest.mark.slow
def test_pruning_documents_forgets_exactly_their_restic_snapshots(
    backup_env, tmp_path, monkeypatch, capsys
):
    root = tmp_path / "small-tree"
    root.mkdir()
    monkeypatch.setenv("BACKUP_DOCUMENTS_ROOT", str(root))
    monkeypatch.setenv("BACKUP_RESTIC_PASSWORD", RESTIC_PASSWORD)
    monkeypatch.setenv("BACKUP_RETENTION_DAILY", "1")
    for name in ("WEEKLY", "MONTHLY", "YEARLY"):
        monkeypatch.setenv(f"BACKUP_RETENTION_{name}", "0")
    for n in range(3):
        (root / f"file-{n}.txt").write_text(str(n))
        time.sleep(1 - time.time() % 1)  # ids are to the second: two in one second tie
        assert run_backup("documents").success
    runtime = runtime_from_env()
    [newest, *older] = runtime.store.list_snapshots("documents")

    assert main(["prune"]) == 0
    assert runtime.store.list_snapshots("documents") == [newest]
    restic = runtime.sources["documents"].repository()
    remaining = json.loads(restic.run("snapshots", "--json", label="listing"))
    assert [s["short_id"] for s in remaining] == [newest.manifest.stats["restic_snapshot_id"]]
    target = tmp_path / "after-prune"
    assert main(["restore", "documents", "--target-dir", str(target)]) == 0
    assert tree_state(target) == tree_state(root)
    assert older and RESTIC_PASSWORD not in capsys.readouterr().err


@pytest.mark.slow
def test_the_drill_compares_the_tree_with_restics_own_count(documents_root, capsys):
    assert run_backup("documents").success
    store = store_from_env()
    snapshot_id = store.find("documents").snapshot_id
    manifest = json.loads(read_manifest_bytes(store, "documents", snapshot_id))
    manifest["stats"]["total_files_processed"] += 1
    replace_manifest(store, "documents", snapshot_id, json.dumps(manifest).encode())

    assert main(["drill", "documents"]) == 1
    assert "the snapshot lists 2504 files, restic counted 2505 at backup" in capsys.readouterr().err


TAMPERINGS = [
    ("root", "/../victim", "names no valid backed-up root"),  # the scratch dir's sibling
    ("root", "relative/path", "names no valid backed-up root"),
    ("restic_snapshot_id", "--help", "names no valid restic snapshot id"),
    ("restic_snapshot_id", "latest", "names no valid restic snapshot id"),
]


def test_a_tampered_documents_manifest_never_moves_files_it_does_not_own(
    backup_env, tmp_path, monkeypatch, capsys
):
    documents = tmp_path / "documents"
    (documents / "contracts").mkdir(parents=True)
    (documents / "contracts" / "a.txt").write_text("signed")
    monkeypatch.setenv("BACKUP_DOCUMENTS_ROOT", str(documents))
    monkeypatch.setenv("BACKUP_RESTIC_PASSWORD", RESTIC_PASSWORD)
    assert run_backup("documents").success
    store = store_from_env()
    snapshot_id = store.find("documents").snapshot_id
    original = read_manifest_bytes(store, "documents", snapshot_id)
    victim, target = tmp_path / "victim", tmp_path / "target"
    for directory in (victim, target):
        directory.mkdir()
        (directory / "keep.txt").write_text("mine")

    for field, value, complaint in TAMPERINGS:
        manifest = json.loads(original)
        manifest["stats"][field] = value
        replace_manifest(store, "documents", snapshot_id, json.dumps(manifest).encode())
        assert main(["restore", "documents", "--target-dir", str(target), "--force"]) == 1
        assert complaint in capsys.readouterr().err, (field, value)
        for directory in (victim, target):
            assert [p.name for p in directory.iterdir()] == ["keep.txt"]
