"""Loading a snapshot into a running server at start-up speed: the server replicates it from us.

The target is told to replicate (`REPLICAOF`) from a small master of ours
that answers the replica's handshake and sends the snapshot's RDB as a full
resynchronization, so the server loads it exactly as it loads its own file
at start-up (every type, TTLs and functions, natively), and is then told
`REPLICAOF NO ONE`. The RDB is streamed from the store as it is decoded, in
Redis's diskless form (`$EOF:<mark>`, no length up front): no plain copy of
it rests on this machine's disk. The master listens only for the length of
the restore, on the address the target reaches this machine by, and serves
only a replica that authenticates with a one-time password (`masterauth`,
set for the restore and put back after).

Where the server refuses `REPLICAOF` or `CONFIG` (managed services, cluster
mode), or does not sync in time (it cannot reach this machine), it is put
back as it was and the caller falls back to copying keys.
"""

from __future__ import annotations

import io
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import BinaryIO

import hiredis
import redis

from backup_pipelines.errors import BackupError
from backup_pipelines.sources.redis.server import RedisServer
from backup_pipelines.sources.source import Log

SYNC_START_TIMEOUT_S = 15
LOAD_RATE_BYTES_S = 20 << 20  # a floor: servers load RDBs several times faster


class ReplicationUnavailable(BackupError):
    """The target cannot replicate from us here; it was put back as a master, without
    the snapshot."""


class SocketWriter(io.RawIOBase):
    """A writable file over a connected socket."""

    def __init__(self, connection: socket.socket):
        self._connection = connection

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._connection.sendall(data)
        return len(data)


class WithoutTrailingMark(io.RawIOBase):
    """Passes an RDB through, minus the 40-byte end mark of a diskless sync that
    `redis-cli --rdb -` leaves after the RDB (it cannot truncate its stdout): a replica
    loading from the socket would take that mark for ours, and refuse the sync.

    The RDB ends with its EOF opcode (0xFF) and an 8-byte checksum, so 49 bytes are held
    back until `finish`; a mark is 40 hex digits, which that end never is."""

    END = 1 + 8 + 40

    def __init__(self, inner: BinaryIO):
        self._inner = inner
        self._held = b""

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        held = self._held + bytes(data)
        if len(held) > self.END:
            self._inner.write(held[: -self.END])
            held = held[-self.END :]
        self._held = held
        return len(data)

    def finish(self) -> None:
        held = self._held
        if len(held) == self.END and held[0] == 0xFF and re.fullmatch(rb"[0-9a-f]{40}", held[9:]):
            held = held[:9]
        self._inner.write(held)


RdbSource = Callable[[BinaryIO], object]
"""Writes the plain RDB into the file it is given (the snapshot's, decoded as it is read)."""


class RdbMaster:
    """Serves one RDB, written by `source`, to replicas that authenticate, until closed."""

    def __init__(self, source: RdbSource, address: str, password: str):
        self.source = source
        self.error: BaseException | None = None
        self.password = password
        self.listener = socket.create_server((address, 0))
        self.address = address
        self.port = self.listener.getsockname()[1]
        self.asked = threading.Event()  # a replica asked for the data
        self.syncs = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self._closed.is_set():
            try:
                connection, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._replica, args=(connection,), daemon=True).start()

    def _replica(self, connection: socket.socket) -> None:
        """One replica's handshake: PING, AUTH, REPLCONF..., then PSYNC gets the RDB.

        Once the RDB is sent the replica only sends newlines while it loads
        and then acknowledges offsets (REPLCONF ACK), which a master does not
        answer: anything we wrote would reach it as a command.
        """
        reader, authenticated = hiredis.Reader(), False
        with connection:
            connection.settimeout(1)
            while not self._closed.is_set():
                command = self._next_command(connection, reader)
                if command == []:
                    return
                if command is None:
                    continue
                name = command[0].upper()
                if name == b"AUTH":
                    authenticated = secrets.compare_digest(command[-1], self.password.encode())
                    connection.sendall(
                        b"+OK\r\n" if authenticated else b"-ERR invalid password\r\n"
                    )
                elif name == b"PING":
                    connection.sendall(b"+PONG\r\n")
                elif not authenticated:
                    connection.sendall(b"-NOAUTH Authentication required.\r\n")
                elif name in (b"PSYNC", b"SYNC"):
                    self._send_rdb(connection)
                    self._drain(connection)
                    return
                else:  # REPLCONF listening-port / capa
                    connection.sendall(b"+OK\r\n")

    @staticmethod
    def _next_command(connection: socket.socket, reader: hiredis.Reader) -> list[bytes] | None:
        """The next command, [] when the replica went away, None when none arrived yet."""
        while (command := reader.gets()) is False:
            try:
                data = connection.recv(65536)
            except TimeoutError:
                return None
            if not data:
                return []
            reader.feed(data)
        return command if isinstance(command, list) else [bytes(command)]

    def _drain(self, connection: socket.socket) -> None:
        """Read and drop what the replica sends until it goes away or we close."""
        while not self._closed.is_set():
            try:
                if not connection.recv(65536):
                    return
            except TimeoutError:
                continue

    def _send_rdb(self, connection: socket.socket) -> None:
        """The RDB between `$EOF:<mark>` and the mark; a source that fails (a damaged
        artifact) closes the connection unmarked, which the replica takes as a failed sync."""
        self.syncs += 1
        self.asked.set()
        mark = secrets.token_hex(20).encode()  # 40 bytes, as Redis's own diskless sync
        connection.sendall(
            f"+FULLRESYNC {secrets.token_hex(20)} 0\r\n$EOF:".encode() + mark + b"\r\n"
        )
        connection.settimeout(None)
        try:
            self.source(SocketWriter(connection))
        except BaseException as exc:  # told to the restoring thread, which raises it
            self.error = exc
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            return
        connection.sendall(mark)
        connection.settimeout(1)


def local_address(target: RedisServer) -> str:
    """The address of this machine on the way to the target: the one the target reaches."""
    with socket.create_connection((target.host, target.port), timeout=10) as probe:
        return probe.getsockname()[0]


@contextmanager
def replicating(client: redis.Redis, master: RdbMaster) -> Iterator[None]:
    """The target as a replica of `master` for the block, put back as it was after."""
    try:
        previous = client.config_get("masterauth").get("masterauth", "")
        client.config_set("masterauth", master.password)
    except redis.ResponseError as exc:
        raise ReplicationUnavailable(f"CONFIG is not allowed on the target ({exc})") from None
    try:
        client.execute_command("REPLICAOF", master.address, master.port)
    except redis.ResponseError as exc:
        client.config_set("masterauth", previous)
        raise ReplicationUnavailable(f"REPLICAOF is not allowed ({exc})") from None
    try:
        yield
    finally:
        _when_loaded(lambda: client.execute_command("REPLICAOF", "NO", "ONE"))
        client.config_set("masterauth", previous)


def _when_loaded(command: Callable[[], object]) -> None:
    """Run `command` once the server answers again: a loading server replies LOADING."""
    deadline = time.monotonic() + 600
    while True:
        try:
            command()
            return
        except redis.BusyLoadingError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def load_by_replication(target: RedisServer, source: RdbSource, size: int, log: Log) -> None:
    """Make the target load the RDB `source` writes (about `size` bytes) as a replica would;
    `ReplicationUnavailable` when it cannot."""
    client = target.client()
    if client.info("replication").get("role") != "master":
        raise BackupError(f"Redis at {target.where} is a replica; restore into its master")
    try:
        address = local_address(target)
    except OSError as exc:
        raise ReplicationUnavailable(
            f"no address of this machine reaches {target.where}: {exc}"
        ) from None
    master = RdbMaster(source, address, secrets.token_urlsafe(24))
    try:
        with replicating(client, master):
            log(f"{target.where} loads the snapshot from {address}:{master.port} (REPLICAOF)")
            if not master.asked.wait(SYNC_START_TIMEOUT_S):
                raise ReplicationUnavailable(
                    f"{target.where} did not sync from {address}:{master.port} within "
                    f"{SYNC_START_TIMEOUT_S} s (can it reach this machine?)"
                )
            _wait_until_loaded(client, master, size, target.where)
    finally:
        master.close()


def _wait_until_loaded(client: redis.Redis, master: RdbMaster, size: int, where: str) -> None:
    """Until the replica's link is up; a second sync means it could not load the first."""
    deadline = time.monotonic() + 60 + size / LOAD_RATE_BYTES_S
    while time.monotonic() < deadline:
        if isinstance(master.error, BackupError):  # the snapshot could not be read
            raise master.error
        if master.error is not None:
            raise ReplicationUnavailable(f"{where} stopped reading the RDB: {master.error}")
        if master.syncs > 1:
            raise ReplicationUnavailable(
                f"{where} could not load the RDB it was sent (see its log)"
            )
        try:
            replication = client.info("replication")
            if replication.get("master_link_status") == "up" and not int(
                replication.get("master_sync_in_progress", 0)
            ):
                return
        except redis.BusyLoadingError:
            pass
        time.sleep(0.05)
    raise BackupError(f"{where} did not finish loading the snapshot in time")
