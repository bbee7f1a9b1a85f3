"""Dagster's open-source UI has no login: a restore launched from it writes only inside the
restore roots, and replaces a target only when the run config repeats its name."""

from __future__ import annotations

from backup_pipelines_tests.conftest import failed_at_once, run_backup, run_job


def restore(config: dict) -> str | None:
    """The failure's description of a restore_job run with `config`; None when it succeeded."""
    config = {"source": "redis", **config}
    result = run_job("restore_job", run_config={"ops": {"restore_snapshot": {"config": config}}})
    return None if result.success else failed_at_once(result)


def test_a_restore_from_dagster_writes_only_inside_the_restore_roots(
    backup_env, tmp_path, monkeypatch
):
    assert run_backup("redis").success
    roots, outside = tmp_path / "roots", tmp_path / "etc"
    roots.mkdir()
    outside.mkdir()
    (outside / "passwd").write_text("canary")
    (roots / "link").symlink_to(outside)

    said = restore({"output_dir": str(roots / "out")})
    assert said is not None and "unless BACKUP_RESTORE_ROOTS names where it may" in said
    monkeypatch.setenv("BACKUP_RESTORE_ROOTS", str(roots))
    for escape in (roots / ".." / "etc", roots / "link", outside, "relative/out"):
        said = restore({"output_dir": str(escape), "force": True, "confirm": str(escape)})
        assert said is not None and "'output_dir'" in said, escape
    assert sorted(p.name for p in outside.iterdir()) == ["passwd"]

    assert restore({"output_dir": str(roots / "out")}) is None
    assert (roots / "out" / "dump.rdb").exists()
    said = restore({"output_dir": str(roots / "out")})  # in the launchpad's words
    assert said is not None and "add 'force: true'" in said and "--force" not in said
    said = restore({"output_dir": str(roots / "out"), "force": True})
    assert said is not None and "set 'confirm' to the target" in said
    said = restore({"output_dir": str(roots / "out"), "force": True, "confirm": "out"})
    assert said is not None and "set 'confirm' to the target" in said
    confirmed = {"output_dir": str(roots / "out"), "force": True, "confirm": str(roots / "out")}
    assert restore(confirmed) is None
