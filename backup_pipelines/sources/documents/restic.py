"""restic, driven as a tool: one repository per store, next to the other sources' snapshots.

restic does what a documents tree needs and a full copy cannot: content-
defined chunking, deduplication, encryption, and incremental backups that
only send what changed. Its password (and S3 keys) reach it only through
its environment, never on a command line.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from backup_pipelines.errors import BackupError, ConfigurationError
from backup_pipelines.processes import ToolFailed, run_tool, running
from backup_pipelines.storage.streams import PROGRESS_EVERY_S

HOST_TAG = "backup-pipelines"
RESTIC_SNAPSHOT_ID = re.compile(r"[0-9a-f]{8}|[0-9a-f]{64}")
PARTIAL_BACKUP = 3
"""restic backup could not read some files: the snapshot would silently miss them."""
NO_REPOSITORY, WRONG_PASSWORD = 10, 12
"""Exit codes of restic 0.17 and later; 0.14 (Debian 12's) says the same only in words."""


class RepositoryMissing(BackupError):
    """There is no restic repository at the location (yet)."""


class WrongPassword(ConfigurationError):
    """The password does not open the repository: never a reason to create another."""


def is_restic_id(value: object) -> bool:
    """A restic snapshot id, short or full: hex only, so never read as an option or a path."""
    return isinstance(value, str) and RESTIC_SNAPSHOT_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class ResticRepository:
    """Where the repository is (a path or `s3:<endpoint>/<bucket>/<prefix>`), and how to open it."""

    location: str
    password: str = field(repr=False)
    s3_access_key: str | None = field(default=None, repr=False)
    s3_secret_key: str | None = field(default=None, repr=False)
    s3_region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(RESTIC_REPOSITORY=self.location, RESTIC_PASSWORD=self.password)
        if self.s3_access_key and self.s3_secret_key:
            env.update(
                AWS_ACCESS_KEY_ID=self.s3_access_key,
                AWS_SECRET_ACCESS_KEY=self.s3_secret_key,
                AWS_DEFAULT_REGION=self.s3_region,
            )
        return env

    def secrets(self) -> list[str | None]:
        return [self.password, self.s3_access_key, self.s3_secret_key]

    def run(self, *args: str, label: str, lock: bool = True) -> str:
        """A restic command to completion. `lock=False` reads without writing a lock file, so
        a verifier with read-only store credentials can check and restore."""
        argv = ["restic", *args] if lock else ["restic", "--no-lock", *args]
        try:
            return run_tool(argv, label=label, env=self.env(), secrets=self.secrets())
        except ToolFailed as exc:
            raise self.classified(exc) from None

    def classified(self, failure: ToolFailed) -> BackupError:
        """What a restic failure means, decided here once for every restic command."""
        if failure.returncode == WRONG_PASSWORD or "wrong password" in failure.stderr:
            return WrongPassword(
                f"BACKUP_RESTIC_PASSWORD does not open the restic repository at {self.location}"
            )
        missing = ("Is there a repository", "does not exist")
        if failure.returncode == NO_REPOSITORY or any(words in failure.stderr for words in missing):
            return RepositoryMissing(f"{failure} (no restic repository at {self.location})")
        return failure

    def backup(self, root: str, tag: str, log: Callable[[str], None]) -> dict[str, Any]:
        """`restic backup --json`, creating the repository on first use; returns the summary.

        Every restic run opens the repository, which costs a key derivation
        (about half a second): so the backup is tried first and `init` runs
        only when restic says there is no repository, never when the
        password is wrong. The snapshot id kept is the one restic reports
        (its short form), which restic resolves like the full one.
        """
        try:
            return self._backup(root, tag, log)
        except RepositoryMissing:
            log(f"initialising the restic repository at {self.location}")
        self.run("init", label=f"restic init at {self.location}")
        return self._backup(root, tag, log)

    def _backup(self, root: str, tag: str, log: Callable[[str], None]) -> dict[str, Any]:
        argv = ["restic", "backup", "--json", "--host", HOST_TAG, "--tag", tag, root]
        label = f"restic backup of {root}"
        summary = None
        try:
            with running(
                argv, label=label, env=self.env(), secrets=self.secrets(), text=True
            ) as process:
                summary = _follow(process.stdout, log)
        except ToolFailed as exc:
            if exc.returncode == PARTIAL_BACKUP and summary is not None:  # not one of ours
                self.run("forget", summary["snapshot_id"], label="restic forget (partial)")
            raise self.classified(exc) from None
        if summary is None:
            raise BackupError(f"{label} gave no summary")
        return summary

    def snapshot_exists(self, snapshot_id: str) -> bool:
        """Whether the repository holds the snapshot; a wrong password is not an answer."""
        try:
            self.run("cat", "snapshot", snapshot_id, label=f"restic cat snapshot {snapshot_id}")
        except (RepositoryMissing, ToolFailed):
            return False
        return True

    def check(self, read_data: str | None, lock: bool = True) -> str:
        """`restic check`, reading all data (`"100%"`), a subset (`"5%"`), or none."""
        args = ["check", f"--read-data-subset={read_data}"] if read_data else ["check"]
        return self.run(*args, label=f"restic check of {self.location}", lock=lock)

    def restore(
        self, snapshot_id: str, target: str, include: Sequence[str] = (), lock: bool = True
    ) -> None:
        """The snapshot (or only the paths `include` names exactly) under `target`; restic
        checks every restored file's content against the repository (`--verify`)."""
        args = ["restore", snapshot_id, "--target", target, "--verify"]
        args += [f"--include={glob_escaped(path)}" for path in include]
        self.run(*args, label=f"restic restore {snapshot_id}", lock=lock)

    def files(self, snapshot_id: str) -> Iterator[tuple[str, int]]:
        """(path, size) of every regular file in the snapshot, streamed (`restic ls --json`),
        read without a lock."""
        argv = ["restic", "--no-lock", "ls", "--json", snapshot_id]
        label = f"restic ls {snapshot_id}"
        try:
            with running(
                argv, label=label, env=self.env(), secrets=self.secrets(), text=True
            ) as ls:
                for line in ls.stdout:
                    node = _json_object(line)
                    if node.get("struct_type") == "node" and node.get("type") == "file":
                        yield str(node.get("path")), int(node.get("size") or 0)
        except ToolFailed as exc:
            raise self.classified(exc) from None

    def forget(self, snapshot_ids: Sequence[str]) -> None:
        """Drop exactly these snapshots, then the data only they used (retention's hook)."""
        if not snapshot_ids:
            return
        if not all(map(is_restic_id, snapshot_ids)):
            raise BackupError("refusing to forget restic snapshots by ids that are not hex ids")
        self.run("forget", *snapshot_ids, label="restic forget")
        self.run("prune", label="restic prune")


def glob_escaped(path: str) -> str:
    """A path as a restic pattern that matches only itself (`*?[]\\` escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", path)


def _json_object(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _follow(lines: Any, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Read restic's JSON lines: report progress now and then, return the summary."""
    summary = None
    next_report = time.monotonic() + PROGRESS_EVERY_S
    for line in lines:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        kind = message.get("message_type")
        if kind == "summary":
            summary = message
        elif kind == "status" and time.monotonic() >= next_report:
            done = message.get("percent_done", 0) * 100
            log(
                f"restic: {done:.0f}% ({message.get('files_done', 0)} of "
                f"{message.get('total_files', '?')} files)"
            )
            next_report = time.monotonic() + PROGRESS_EVERY_S
        elif kind == "error":
            log(f"restic could not read {message.get('item')}: {message.get('error', {})}")
    return summary
