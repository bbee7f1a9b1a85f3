"""Private redis-server processes for tests, and a full description of what one holds."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from backup_pipelines_tests.conftest import free_port

FUNCTION_LIBRARY = """#!lua name=crmlib
redis.register_function('greet', function(keys, args) return 'hello ' .. args[1] end)
"""


@contextmanager
def redis_process(
    directory: Path, password: str | None = None, aof: bool = False, config: tuple[str, ...] = ()
) -> Iterator[redis.Redis]:
    """A redis-server of our own on a free port (never the machine's 6379), stopped afterwards.

    `config` adds command-line settings, e.g. `("--rename-command", "REPLICAOF", "")`
    for a server that forbids what managed services forbid.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "yes" if aof else "no",
        "--repl-diskless-sync-delay",
        "0",
        "--logfile",
        str(directory / "redis.log"),
    ]
    if password:
        command += ["--requirepass", password]
    command += config
    process = subprocess.Popen(command)
    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield client
    finally:
        process.terminate()
        process.wait(timeout=10)


def on_db(client: redis.Redis, db: int) -> redis.Redis:
    """A client of the same server, on another database."""
    kwargs = client.connection_pool.connection_kwargs
    return redis.Redis(
        host=kwargs["host"], port=kwargs["port"], password=kwargs.get("password"), db=db
    )


def fill_crm_data(client: redis.Redis) -> None:
    """Several databases, every data type, binary and unicode, TTLs, a stream, a function."""
    db0 = client
    db0.set("fsm:user:42", "awaiting_phone")
    db0.set(b"bin:\x00\xff", bytes(range(256)))
    db0.set("unicode:ключ", "значение — 東京")
    db0.set("session:abc", "token", ex=3600)
    db0.set("counter", 41)
    db0.incr("counter")
    db0.rpush("queue:emails", *[f"mail-{n}" for n in range(300)])
    db0.sadd("tags", "vip", "new", "b2b")
    db0.zadd("leaderboard", {"ann": 3.5, "bob": -1, "cy": 1e10})
    db0.hset("contact:1", mapping={"name": "Ada", "email": "ada@example.org", "bin": b"\x00\x01"})
    db0.hset("big:hash", mapping={f"f{n}": n for n in range(1000)})
    db0.pexpire("big:hash", 7_200_000)
    db0.xadd("events", {"type": "signup", "user": "42"})
    db0.xadd("events", {"type": "login", "user": "42"})
    db0.xgroup_create("events", "mailer", id="0")
    db0.xreadgroup("mailer", "worker-1", {"events": ">"}, count=1)
    db0.function_load(FUNCTION_LIBRARY)
    db3 = on_db(client, 3)
    for n in range(500):
        db3.set(f"cache:{n}", "x" * n, ex=600 + n)
    db15 = on_db(client, 15)
    db15.lpush("only-in-15", "a", "b")


def server_state(client: redis.Redis) -> dict:
    """Every key of every database with its type, value and TTL (seconds), and the functions."""
    libraries = [
        dict(zip(lib[::2], lib[1::2], strict=True)) for lib in client.function_list(withcode=True)
    ]
    state: dict = {
        "functions": sorted((lib[b"library_name"], lib[b"library_code"]) for lib in libraries)
    }
    for name in client.info("keyspace"):
        db = on_db(client, int(name[2:]))
        for key in db.scan_iter(count=1000):
            state[(name, key)] = (db.type(key), _value(db, key), db.pttl(key) / 1000)
    return state


def _value(db: redis.Redis, key: bytes) -> object:
    kind = db.type(key)
    if kind == b"string":
        return db.get(key)
    if kind == b"list":
        return db.lrange(key, 0, -1)
    if kind == b"set":
        return sorted(db.smembers(key))
    if kind == b"zset":
        return db.zrange(key, 0, -1, withscores=True)
    if kind == b"hash":
        return sorted(db.hgetall(key).items())
    if kind == b"stream":
        groups = [(g["name"], g["pending"], g["last-delivered-id"]) for g in db.xinfo_groups(key)]
        return db.xrange(key), groups
    raise AssertionError(f"unexpected type {kind!r}")


def assert_same_data(restored: dict, original: dict, ttl_tolerance_s: float = 5) -> None:
    """Equal keys, types, values and functions; TTLs equal within a few seconds."""
    assert restored.keys() == original.keys()
    assert restored["functions"] == original["functions"]
    keys = (key for key in original if key != "functions")
    for key in keys:
        kind, value, ttl = original[key]
        assert restored[key][:2] == (kind, value), key
        if ttl < 0:
            assert restored[key][2] == ttl, key
        else:
            assert abs(restored[key][2] - ttl) <= ttl_tolerance_s, key
