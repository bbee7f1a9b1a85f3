"""A small HTTP double of Consul's documented API, for tests. It is NOT Consul.

No Consul binary can be installed on these machines, so this serves, over
real HTTP on a loopback port, the endpoints backup_pipelines uses, as
Consul's public API documentation describes them:

- `GET /v1/kv/<prefix>?recurse` → `[{"Key", "Flags", "Value" (base64, null
  when empty), "CreateIndex", "ModifyIndex", "LockIndex", "Session"}]`, 404
  when nothing matches, `X-Consul-Index` header; `?keys` → key names only.
  Entries a token may not read are left out and the response then carries
  `X-Consul-Results-Filtered-By-ACLs: true`.
- `PUT /v1/kv/<key>?flags=N` with the raw value as body → `true`;
  `DELETE /v1/kv/<prefix>?recurse` → `true`.
- `GET /v1/snapshot` → a gzip'd tar of `meta.json`, `state.bin` and
  `SHA256SUMS`, with `X-Consul-Index`; `PUT /v1/snapshot` restores one
  (and refuses an archive whose sums do not match). Here `state.bin` is
  JSON of the KV store, not Consul's Raft encoding.
- `GET /v1/agent/self` → `{"Config": {"Version": ...}}`.
- ACLs: the token comes in `X-Consul-Token`; an unknown token gets 403
  `ACL not found`, a token without the right gets 403 `Permission denied`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

MANAGEMENT = "management"


@dataclass
class ConsulState:
    kv: dict[str, tuple[int, bytes, int, int]] = field(
        default_factory=dict
    )  # flags, value, indexes
    index: int = 1
    tokens: dict[str, str] = field(default_factory=dict)  # token → readable prefix or MANAGEMENT
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, key: str, value: bytes, flags: int = 0) -> None:
        with self.lock:
            self.index += 1
            create = self.kv[key][2] if key in self.kv else self.index
            self.kv[key] = (flags, value, create, self.index)

    def archive(self) -> bytes:
        state = json.dumps(
            {k: [f, base64.b64encode(v).decode(), c, m] for k, (f, v, c, m) in self.kv.items()}
        ).encode()
        members = {
            "meta.json": json.dumps(
                {"ID": f"double-{self.index}", "Index": self.index, "Term": 2, "Version": 1}
            ).encode(),
            "state.bin": state,
        }
        members["SHA256SUMS"] = "".join(
            f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in members.items()
        ).encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    def load_archive(self, raw: bytes) -> None:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        sums = dict(reversed(line.split()) for line in members["SHA256SUMS"].decode().splitlines())
        for name, digest in sums.items():
            if hashlib.sha256(members[name]).hexdigest() != digest:
                raise ValueError(f"{name} does not match SHA256SUMS")
        state = json.loads(members["state.bin"])
        with self.lock:
            self.kv = {k: (f, base64.b64decode(v), c, m) for k, (f, v, c, m) in state.items()}
            self.index = json.loads(members["meta.json"])["Index"]


class _Handler(BaseHTTPRequestHandler):
    state: ConsulState

    def log_message(self, *args: object) -> None:  # quiet test output
        pass

    def _reply(self, status: int, body: bytes | str | object, headers: dict | None = None) -> None:
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for name, value in {"X-Consul-Index": str(self.state.index), **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _access(self) -> str | None:
        """The token's right, or None after answering 403 for an unknown token."""
        token = self.headers.get("X-Consul-Token", "anonymous")
        if token not in self.state.tokens:
            self._reply(403, "ACL not found")
            return None
        return self.state.tokens[token]

    def _route(self) -> tuple[str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        return unquote(parts.path), parse_qs(parts.query, keep_blank_values=True)

    def do_GET(self) -> None:
        right = self._access()
        if right is None:
            return
        path, query = self._route()
        if path == "/v1/agent/self":
            self._reply(200, {"Config": {"Version": "1.17.0-double"}})
        elif path == "/v1/snapshot":
            if right != MANAGEMENT:
                self._reply(403, "Permission denied")
            else:
                self._reply(200, self.state.archive(), {"Content-Type": "application/x-gzip"})
        elif path.startswith("/v1/kv/"):
            self._get_kv(path.removeprefix("/v1/kv/"), query, right)
        else:
            self._reply(404, "not found")

    def _get_kv(self, prefix: str, query: dict[str, list[str]], right: str) -> None:
        with self.state.lock:
            matching = sorted(k for k in self.state.kv if k.startswith(prefix))
            if "recurse" not in query and "keys" not in query:
                matching = [k for k in matching if k == prefix]
            readable = [k for k in matching if right == MANAGEMENT or k.startswith(right)]
            entries = [
                {
                    "Key": k,
                    "Flags": self.state.kv[k][0],
                    "Value": base64.b64encode(self.state.kv[k][1]).decode() or None,
                    "CreateIndex": self.state.kv[k][2],
                    "ModifyIndex": self.state.kv[k][3],
                    "LockIndex": 0,
                    "Session": "",
                }
                for k in readable
            ]
        headers = {"X-Consul-Results-Filtered-By-ACLs": "true"} if readable != matching else {}
        if not readable:
            self._reply(404, "", headers)
        elif "keys" in query:
            self._reply(200, [entry["Key"] for entry in entries], headers)
        else:
            self._reply(200, entries, headers)

    def do_PUT(self) -> None:
        right = self._access()
        if right is None:
            return
        path, query = self._route()
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if right != MANAGEMENT:
            self._reply(403, "Permission denied")
        elif path == "/v1/snapshot":
            try:
                self.state.load_archive(body)
            except (ValueError, KeyError, tarfile.TarError) as exc:
                self._reply(500, f"failed to restore snapshot: {exc}")
                return
            self._reply(200, "")
        elif path.startswith("/v1/kv/"):
            self.state.put(path.removeprefix("/v1/kv/"), body, int(query.get("flags", ["0"])[0]))
            self._reply(200, "true")
        else:
            self._reply(404, "not found")

    def do_DELETE(self) -> None:
        right = self._access()
        if right is None:
            return
        path, query = self._route()
        if right != MANAGEMENT:
            self._reply(403, "Permission denied")
            return
        prefix = path.removeprefix("/v1/kv/")
        with self.state.lock:
            doomed = [
                k
                for k in self.state.kv
                if (k.startswith(prefix) if "recurse" in query else k == prefix)
            ]
            for key in doomed:
                del self.state.kv[key]
            self.state.index += 1
        self._reply(200, "true")


class ConsulDouble:
    """The double on a free loopback port, in a thread; `url`, `state`, `close()`."""

    def __init__(self, tokens: dict[str, str]):
        self.state = ConsulState(tokens=tokens)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
