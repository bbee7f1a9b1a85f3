"""A Redis server as backup and restore see it, and throw-away servers to load snapshots into.

The password reaches `redis-cli` only through `REDISCLI_AUTH` in its own
environment (never `-a`, which `ps` would show) and is never in a message.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.connection import parse_url

from backup_pipelines.errors import (
    BackupError,
    ConfigurationError,
    IntegrityError,
    SourceRefused,
    SourceUnavailable,
    connection_cause,
)
from backup_pipelines.processes import (
    ToolMissing,
    as_os_user,
    free_loopback_port,
    unprivileged_user,
)
from backup_pipelines.redaction import mask_url

STARTUP_TIMEOUT_S = 60
QUESTION_TIMEOUT_S = 30
BULK_TIMEOUT_S = 300


class RedisUnavailable(SourceUnavailable):
    """The server could not be reached; worth retrying."""


class RedisRefused(SourceRefused):
    """The server refused our credentials or command: retrying will not help."""


@dataclass(frozen=True)
class RedisServer:
    host: str = "localhost"
    port: int = 6379
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0

    @classmethod
    def from_url(cls, url: str) -> RedisServer:
        """`redis://[user][:password]@host:port[/db]`, as operators write it."""
        try:
            parts = parse_url(url)
        except ValueError as exc:
            raise ConfigurationError(f"not a valid Redis URL: {mask_url(url)} ({exc})") from None
        return cls(
            host=parts.get("host", "localhost"),
            port=int(parts.get("port", 6379)),
            username=parts.get("username"),
            password=parts.get("password"),
            db=int(parts.get("db", 0)),
        )

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def secrets(self) -> list[str | None]:
        return [self.password]

    def client(self, db: int | None = None, timeout_s: float = BULK_TIMEOUT_S) -> redis.Redis:
        """A client whose every reply must come within `timeout_s`: long for bulk work
        (MIGRATE of a large batch), `QUESTION_TIMEOUT_S` for a question (INFO, CONFIG GET),
        so a hung server fails a backup in seconds rather than holding it."""
        return redis.Redis(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            db=self.db if db is None else db,
            socket_connect_timeout=10,
            socket_timeout=timeout_s,
        )

    def cli_args(self) -> list[str]:
        """Connection arguments for redis-cli; the password goes in `cli_env()`."""
        args = ["-h", self.host, "-p", str(self.port)]
        return [*args, "--user", self.username] if self.username else args

    def cli_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("REDISCLI_AUTH", None)
        if self.password:
            env["REDISCLI_AUTH"] = self.password
        return env

    def info(self, timeout_s: float = QUESTION_TIMEOUT_S) -> dict[str, Any]:
        """INFO of the server, with connection failures turned into clear, classified errors."""
        try:
            return self.client(timeout_s=timeout_s).info()
        except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
            raise RedisRefused(
                f"Redis at {self.where} refused the credentials ({exc}); check "
                "BACKUP_REDIS_PASSWORD (and BACKUP_REDIS_USERNAME)"
            ) from None
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                raise RedisRefused(
                    f"Redis at {self.where} needs a password: set BACKUP_REDIS_PASSWORD"
                ) from None
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise RedisUnavailable(
                f"cannot connect to Redis at {self.where}: {connection_cause(exc) or exc}"
            ) from None


def keyspace(info: dict[str, Any]) -> dict[str, int]:
    """Keys per database (`db0` → count) from INFO, databases without keys left out."""
    return {
        name: int(value["keys"])
        for name, value in info.items()
        if name.startswith("db") and name[2:].isdigit() and isinstance(value, dict)
    }


@contextmanager
def throwaway_server() -> Iterator[RedisServer]:
    """A private, empty redis-server on a free loopback port, stopped when the block ends.

    It keeps nothing (no save, no AOF) and loads what it replicates straight
    from the socket (`repl-diskless-load on-empty-db`): its directory, 0700
    and removed after, only ever holds its log. The bytes it parses are the
    snapshot's: it runs unprivileged (`unprivileged_user`).
    """
    port, user = free_loopback_port(), unprivileged_user()
    with tempfile.TemporaryDirectory(prefix="redis-throwaway-") as directory:
        if user:
            os.chown(directory, pwd.getpwnam(user).pw_uid, -1)
        log = Path(directory, "redis.log")
        command = [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
            "--save", "", "--appendonly", "no", "--repl-diskless-load", "on-empty-db",
            "--logfile", str(log),
        ]  # fmt: skip
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, **as_os_user(user))
        except FileNotFoundError:
            raise ToolMissing("loading the snapshot", "redis-server") from None
        server = RedisServer(host="127.0.0.1", port=port)
        try:
            _wait_until_loaded(process, server, log)
            yield server
        finally:
            process.terminate()
            process.wait(timeout=30)


def _wait_until_loaded(process: subprocess.Popen, server: RedisServer, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise IntegrityError(f"redis-server could not load the RDB: {' '.join(tail)}")
        try:
            if server.client().info("persistence").get("loading") == 0:
                return
        except (redis.ConnectionError, redis.BusyLoadingError):
            pass
        time.sleep(0.1)
    raise BackupError(
        f"the throw-away redis-server did not finish loading in {STARTUP_TIMEOUT_S} s"
    )
