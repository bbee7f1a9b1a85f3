"""Running the operators' own tools (pg_dump, restic, ...) with errors an operator can act on.

Every tool runs through `running`: stdout piped to the caller, stderr kept in
a temporary file, and on exit a `ToolFailed` carrying the exit status and the
masked tail of stderr, so each tool's module can classify a failure once (by
exit code where the tool has one, by its words where it has not) instead of
matching message text wherever the tool is called.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from backup_pipelines.errors import BackupError, ConfigurationError, SourceUnavailable
from backup_pipelines.redaction import redact

STDERR_TAIL_BYTES = 2000
PIPE_BYTES = 1 << 20


class ToolMissing(ConfigurationError):
    """The tool is not installed: retrying will not help, installing will."""

    def __init__(self, label: str, tool: str):
        super().__init__(f"{label}: '{tool}' is not installed (run 'make install')")


class ToolFailed(BackupError):
    """A tool exited non-zero; `stderr` is the tail of what it said, secrets masked."""

    def __init__(self, label: str, returncode: int, stderr: str):
        self.label = label
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(
            f"{label} failed ({describe_exit(returncode)}): {stderr or 'no error output'}"
        )


def free_loopback_port() -> int:
    """A port on 127.0.0.1 nothing listens on now, for a throwaway server (a drill's
    cluster, a restore's redis-server) that only this machine reaches."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def describe_exit(returncode: int) -> str:
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"


UNPRIVILEGED_USER = "nobody"
"""Who a tool that reads snapshot content (untrusted bytes) runs as when this process is root."""


def as_os_user(user: str | None) -> dict[str, Any]:
    """`subprocess.Popen`'s arguments that run a child as `user` with that user's own groups
    (its primary and supplementary ones), not this process's: `user=` alone keeps root's
    groups. Empty for None (the child runs as we do)."""
    if user is None:
        return {}
    gid = pwd.getpwnam(user).pw_gid
    return {"user": user, "group": gid, "extra_groups": os.getgrouplist(user, gid)}


def unprivileged_user() -> str | None:
    """`UNPRIVILEGED_USER` when this process is root (a flaw in a parser then gives no root),
    else None: the tool runs as we do, already no root."""
    return UNPRIVILEGED_USER if os.geteuid() == 0 else None


def stderr_tail(stream: BinaryIO, secrets: Sequence[str | None]) -> str:
    """The last lines a tool wrote to stderr, on one line, with secrets masked."""
    stream.seek(0, os.SEEK_END)
    stream.seek(max(0, stream.tell() - STDERR_TAIL_BYTES))
    text = stream.read().decode("utf-8", "replace").strip()
    return redact(" ".join(text.split()), secrets)


@contextmanager
def running(
    argv: Sequence[str],
    *,
    label: str,
    env: Mapping[str, str] | None = None,
    secrets: Sequence[str | None] = (),
    text: bool = False,
    user: str | None = None,
    cwd: Path | None = None,
    fed: bool = False,
) -> Iterator[subprocess.Popen]:
    """Start a tool with its stdout piped to the block; raise `ToolFailed` unless it exits 0.

    `label` names the work in messages instead of argv, which may hold a
    connection string; `secrets` are masked in what the tool printed. When
    the block raises, the tool is killed and the block's own error stands.
    `user` runs it as that OS user (root only: PostgreSQL's server refuses root).
    `fed` gives it a pipe as stdin, for the block to write into (otherwise it reads nothing).
    """
    with tempfile.TemporaryFile() as stderr:
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if fed else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=dict(env) if env is not None else None,
                text=text,
                cwd=cwd,
                **as_os_user(user),
            )
        except FileNotFoundError:
            raise ToolMissing(label, argv[0]) from None
        assert process.stdout is not None
        if process.stdin is not None:
            _widen(process.stdin)
        try:
            yield process
        except BaseException:
            process.kill()
            raise
        finally:
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    with suppress(BrokenPipeError):
                        pipe.close()
            returncode = process.wait()
        if returncode != 0:
            raise ToolFailed(label, returncode, stderr_tail(stderr, secrets))


class Stalled(SourceUnavailable):
    """A tool gave nothing for longer than its limit: the source it reads hangs."""


@contextmanager
def stopped_when_stalled(
    process: subprocess.Popen, label: str, progress: Callable[[], int], limit_s: float
) -> Iterator[None]:
    """Kill `process` once `progress()` (bytes it gave so far) has not grown for `limit_s`:
    a source that accepted the connection and never answers (a stopped server, a dead
    network path) would otherwise hold the backup, and its pool slot, forever. `Stalled`
    names it, as a transient failure (the run's retry policy tries again)."""
    stalled, done = threading.Event(), threading.Event()

    def watch() -> None:
        seen, since = progress(), time.monotonic()
        while not done.wait(min(1.0, limit_s / 4)):
            if (now := progress()) != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since >= limit_s:
                stalled.set()
                process.kill()
                return

    watcher = threading.Thread(target=watch, name=f"stall-watch {label}", daemon=True)
    watcher.start()
    try:
        yield
    except BackupError:
        if not stalled.is_set():
            raise
    finally:
        done.set()
        watcher.join()
    if stalled.is_set():
        raise Stalled(
            f"{label} gave nothing for {limit_s:.0f} s and was stopped: is the source hung (a "
            "stopped server, a dead network path)? BACKUP_STALL_TIMEOUT_S sets how long to wait"
        )


def _widen(pipe: BinaryIO) -> None:
    """A 1 MiB pipe instead of 64 KiB: a tool fed a stream of hundreds of megabytes then
    wakes up sixteen times less often (Linux; elsewhere the pipe stays as it is)."""
    with suppress(OSError, AttributeError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def run_tool(
    argv: Sequence[str],
    *,
    label: str,
    env: Mapping[str, str] | None = None,
    secrets: Sequence[str | None] = (),
    user: str | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
) -> str:
    """Run a tool to completion and return its stdout (tools here print little); `input`
    (small: a script) is its stdin, so it never has to rest in a file."""
    tool = {"env": env, "secrets": secrets, "user": user, "cwd": cwd}
    with running(argv, label=label, fed=input is not None, **tool) as process:
        output, _ = process.communicate(input)
    return output.decode("utf-8", "replace")
