"""A loopback TCP proxy that can go dark mid-transfer, to make a real endpoint unreachable."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class _Proxy:
    """Forwards 127.0.0.1:<port> to an upstream port, one pump per direction; each kind of
    proxy says in `_pump` what it does to the bytes."""

    def __init__(self, upstream_port: int):
        self._upstream_port = upstream_port
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
            with self._lock:
                self._sockets += [client, upstream]
            for pump in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=pump, daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, to_upstream: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in [self._listener, *sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class CuttingProxy(_Proxy):
    """Forwards 127.0.0.1:<port> to an upstream port until `cut_after` bytes went upstream.

    Then it closes every connection and its listening socket, so the endpoint
    behaves like a server that died mid-upload: resets, then refusals.
    """

    def __init__(self, upstream_port: int, cut_after: int):
        self._cut_after = cut_after
        self._sent = 0
        self.cut = threading.Event()
        super().__init__(upstream_port)

    @property
    def sent(self) -> int:
        """Bytes forwarded upstream so far."""
        with self._lock:
            return self._sent

    def _pump(self, source: socket.socket, target: socket.socket, to_upstream: bool) -> None:
        try:
            while data := source.recv(65536):
                if to_upstream:
                    with self._lock:
                        self._sent += len(data)
                        over = self._sent > self._cut_after
                    if over:
                        self.close()
                        return
                target.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.cut.set()
        super().close()


class SwitchableProxy:
    """Forwards <host>:<port> (127.0.0.1 unless `host` says otherwise: the address another
    network namespace reaches this one at) to an upstream port on 127.0.0.1 while up;
    `down()` closes every connection and stops listening (refusals, as from a store that is
    gone), `up()` listens on the same port again. A store reached through it goes away and
    comes back unchanged. `downstream_rate` (bytes per second) makes what the upstream sends
    arrive slowly, as over a thin link."""

    def __init__(
        self, upstream_port: int, *, downstream_rate: float | None = None, host: str = "127.0.0.1"
    ):
        self._upstream_port = upstream_port
        self._host = host
        self._rate = downstream_rate
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def up(self) -> None:
        listener = socket.create_server((self._host, self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
            listener, self._listener = self._listener, None
        for sock in [s for s in (listener, *sockets) if s is not None]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
            with self._lock:
                self._sockets += [client, upstream]
            for pump in ((client, upstream, None), (upstream, client, self._rate)):
                threading.Thread(target=_pump, args=pump, daemon=True).start()


def _pump(source: socket.socket, target: socket.socket, rate: float | None = None) -> None:
    try:
        while data := source.recv(16384 if rate else 65536):
            target.sendall(data)
            if rate:
                time.sleep(len(data) / rate)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


class StallingProxy(_Proxy):
    """Forwards 127.0.0.1:<port> to an upstream port until `stall_after` bytes came back from
    it; then forwards nothing more either way and keeps every connection open, as a server
    that stopped answering (SIGSTOPped, or a network dropping every packet) behaves. With
    `stall_after=0` it answers nothing at all."""

    def __init__(self, upstream_port: int, stall_after: int = 0):
        self._stall_after = stall_after
        self._received = 0
        self.stalled = threading.Event()
        if stall_after == 0:
            self.stalled.set()
        super().__init__(upstream_port)

    def _pump(self, source: socket.socket, target: socket.socket, to_upstream: bool) -> None:
        try:
            while (data := source.recv(65536)) and not self.stalled.is_set():
                if not to_upstream:
                    with self._lock:
                        self._received += len(data)
                        if self._received > self._stall_after:
                            self.stalled.set()
                            return
                target.sendall(data)
        except OSError:
            pass
