"""Running the operators' own tools (pg_restore, psql, ...) with errors an operator can act on."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import BinaryIO

from backup_pipelines.errors import BackupError
from backup_pipelines.redaction import redact

STDERR_TAIL_BYTES = 2000


def describe_exit(returncode: int) -> str:
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"


def stderr_tail(stream: BinaryIO, secrets: Sequence[str | None]) -> str:
    """The last lines a tool wrote to stderr, on one line, with secrets masked."""
    stream.seek(0, os.SEEK_END)
    stream.seek(max(0, stream.tell() - STDERR_TAIL_BYTES))
    text = stream.read().decode("utf-8", "replace").strip()
    return redact(" ".join(text.split()), secrets)


def not_installed(label: str, tool: str) -> BackupError:
    return BackupError(f"{label}: '{tool}' is not installed (run 'make install')")


def run_tool(
    argv: Sequence[str],
    *,
    label: str,
    env: Mapping[str, str] | None = None,
    secrets: Sequence[str | None] = (),
) -> str:
    """Run a tool to completion and return its stdout; raise `BackupError` unless it exits 0.

    `label` names the work in messages instead of argv, which may hold a
    connection string; `secrets` are masked in what the tool printed.
    """
    with tempfile.TemporaryFile() as stderr:
        try:
            result = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=dict(env) if env is not None else None,
                check=False,
            )
        except FileNotFoundError:
            raise not_installed(label, argv[0]) from None
        if result.returncode != 0:
            raise BackupError(
                f"{label} failed ({describe_exit(result.returncode)}): "
                f"{stderr_tail(stderr, secrets) or 'no error output'}"
            )
    return result.stdout.decode("utf-8", "replace")
