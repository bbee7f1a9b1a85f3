"""The table of contents at the head of a `pg_dump -Fc` archive, read from its first bytes.

A custom-format archive is a header, a table of contents (every object:
its dump id, kind, section and dependencies), then the data blocks in
table-of-contents order. A dump streamed through zstd (and age) has no
data offsets in its table of contents, and `pg_restore -j` refuses a pipe;
the restore therefore reads the table of contents alone (schema, no rows:
kilobytes to a few megabytes) and hands `pg_restore` that prefix for the
sections that carry no data, while the data is fed from streams.

The layout follows `ReadHead` and `ReadToc` of PostgreSQL's
`src/bin/pg_dump/pg_backup_archiver.c` (archive versions 1.12 to 1.16,
PostgreSQL 9.6 to 17); an archive this module cannot read is refused with
the reason, never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAGIC = b"PGDMP"
CUSTOM_FORMAT = 1
OLDEST_VERSION = (1, 12)
NEWEST_MINOR = 16
SECTIONS = {1: "none", 2: "pre-data", 3: "data", 4: "post-data"}
NO_DATA = 3
DATA_BLOCK = b"\x01"
"""The block type of table data in the custom format (BLK_DATA)."""
"""The custom format's offset state of an entry without a data block (K_OFFSET_NO_DATA)."""


class IncompleteToc(Exception):
    """More bytes are needed before the table of contents ends."""


class UnreadableArchive(Exception):
    """The bytes are not a custom-format archive this module knows how to read."""


@dataclass(frozen=True)
class TocEntry:
    dump_id: int
    desc: str
    """The object's kind as pg_restore --list shows it: TABLE, TABLE DATA, INDEX, ..."""
    section: str
    namespace: str
    tag: str
    has_data: bool
    """The entry is followed by a data block (TABLE DATA, BLOBS)."""
    dependencies: tuple[int, ...] = ()
    definition: str = ""
    """The SQL pg_restore runs for the entry (untrusted: only ever matched, never run by us)."""

    def list_line(self) -> str:
        """A line of a `pg_restore --use-list` file (only the dump id before ';' counts)."""
        return f"{self.dump_id}; {self.desc} {self.namespace} {self.tag}".replace("\n", " ")


@dataclass(frozen=True)
class Toc:
    """The header and table of contents: `prefix` is their bytes, a valid archive of its own
    for everything that needs no data block."""

    prefix: bytes
    entries: list[TocEntry] = field(default_factory=list)
    int_size: int = 4

    @property
    def end_of_block(self) -> bytes:
        """What ends a data block: a chunk of length 0 (`WriteInt(0)`)."""
        return self._integer(0)

    def block_marker(self, entry: TocEntry) -> bytes | None:
        """The bytes that end the data block before `entry`'s and start its own: the end of
        a block (a chunk of length 0), the data block type and its dump id. Table data is
        COPY text, which holds no NUL byte: in the table data before `entry` they appear
        nowhere else. None for the stream's first data block, and for one behind a block of
        another kind (large objects: binary), where nothing is to be skipped or it cannot
        be told safely."""
        before = [e for e in self.entries[: self.entries.index(entry)] if e.has_data]
        if not before or entry.desc != "TABLE DATA":
            return None
        if any(e.desc != "TABLE DATA" for e in before):
            return None
        return self.end_of_block + DATA_BLOCK + self._integer(entry.dump_id)

    def _integer(self, value: int) -> bytes:
        """`WriteInt`: a sign byte, then `int_size` bytes, least significant first."""
        return b"\x00" + value.to_bytes(self.int_size, "little")

    def in_section(self, section: str) -> list[TocEntry]:
        """The entries pg_restore's `--section` would pick: an entry of section "none" (a
        comment, an ACL) belongs to the section of the entry before it."""
        current, picked = "pre-data", []
        for entry in self.entries:
            if entry.section != "none":
                current = entry.section
            if current == section:
                picked.append(entry)
        return picked


class _Cursor:
    """Reads pg_dump's integers and strings from `data`, raising `IncompleteToc` at its end."""

    def __init__(self, data: bytes | bytearray):
        self.data = data
        self.position = 0
        self.int_size = 4

    def take(self, count: int) -> bytes:
        end = self.position + count
        if end > len(self.data):
            raise IncompleteToc
        chunk = bytes(self.data[self.position : end])
        self.position = end
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def integer(self) -> int:
        """A sign byte, then `int_size` bytes, least significant first (`ReadInt`)."""
        negative = self.byte()
        value = int.from_bytes(self.take(self.int_size), "little")
        return -value if negative else value

    def string(self) -> str | None:
        """A length, then that many bytes; -1 stands for NULL (`ReadStr`)."""
        length = self.integer()
        if length < 0:
            return None
        return self.take(length).decode("utf-8", "replace")


def read_toc(data: bytes | bytearray) -> Toc:
    """The table of contents at the head of `data`; `IncompleteToc` when `data` ends first,
    `UnreadableArchive` when it is not a custom-format archive of a known version."""
    cursor = _Cursor(data)
    version, offset_size = _read_header(cursor)
    entries = [_read_entry(cursor, version, offset_size) for _ in range(cursor.integer())]
    prefix = bytes(data[: cursor.position])
    return Toc(prefix=prefix, entries=entries, int_size=cursor.int_size)


def _read_header(cursor: _Cursor) -> tuple[tuple[int, int], int]:
    if cursor.take(len(MAGIC)) != MAGIC:
        raise UnreadableArchive("it does not start with pg_dump's PGDMP")
    major, minor, _revision = cursor.byte(), cursor.byte(), cursor.byte()
    version = (major, minor)
    if version < OLDEST_VERSION or major != 1 or minor > NEWEST_MINOR:
        raise UnreadableArchive(f"archive version {major}.{minor} is not one this restore reads")
    cursor.int_size, offset_size = cursor.byte(), cursor.byte()
    if cursor.byte() != CUSTOM_FORMAT:
        raise UnreadableArchive("it is not pg_dump's custom format (-Fc)")
    if minor >= 15:
        cursor.byte()  # compression algorithm
    else:
        cursor.integer()  # compression level
    for _ in range(7):  # creation time: seconds, minutes, ..., isdst
        cursor.integer()
    for _ in range(3):  # database name, server version, pg_dump version
        cursor.string()
    return version, offset_size


def _read_entry(cursor: _Cursor, version: tuple[int, int], offset_size: int) -> TocEntry:
    dump_id = cursor.integer()
    had_dumper = cursor.integer()
    cursor.string()  # table oid
    cursor.string()  # oid
    tag = cursor.string() or ""
    desc = cursor.string() or ""
    section = SECTIONS.get(cursor.integer(), "none")
    definition = cursor.string() or ""
    cursor.string()  # drop statement
    cursor.string()  # COPY statement
    namespace = cursor.string() or ""
    cursor.string()  # tablespace
    if version >= (1, 14):
        cursor.string()  # table access method
    if version >= (1, 16):
        cursor.integer()  # relkind
    cursor.string()  # owner
    cursor.string()  # "false" (WITH OIDS, long gone)
    dependencies = []
    while (dependency := cursor.string()) is not None:
        dependencies.append(int(dependency))
    data_state = cursor.byte()  # the custom format's data offset: a state, then the offset
    cursor.take(offset_size)
    return TocEntry(
        dump_id=dump_id,
        desc=desc,
        section=section,
        namespace=namespace,
        tag=tag,
        has_data=bool(had_dumper) and data_state != NO_DATA,
        dependencies=tuple(dependencies),
        definition=definition,
    )
