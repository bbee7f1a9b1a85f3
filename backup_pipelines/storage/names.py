"""The names that become paths and keys: sources, snapshot ids and artifact names.

Everything read back from a store (a manifest, a listing, a key) and every
id an operator types is untrusted: a name with `../`, a separator, an
absolute path or a control character would make a read, write or delete
land outside the snapshot it is meant for. Every such name passes one of
these checks before it is joined into a path or a key, so no other module
has to think about it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

SNAPSHOT_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")
"""The contract's `YYYYMMDDTHHMMSSZ-<8 hex>`; ASCII digits only (`\\d` would take any script's)."""
WORD = r"[a-z][a-z0-9_]{0,62}"
SOURCE_NAME = re.compile(rf"{WORD}(\.{WORD})?")
"""A kind (`<kind>`), or a kind and one of its targets (`<kind>.<target>`)."""
TARGET_NAME = re.compile(WORD)
"""A target's name, and a site's (`BACKUP_SITE`, a target's `site`)."""
MAX_NAME_BYTES = 255  # what every common file system allows in one name


def is_site_name(value: object) -> bool:
    return isinstance(value, str) and TARGET_NAME.fullmatch(value) is not None


def shown(value: object, limit: int = 60) -> str:
    """An untrusted value as it may appear in a message: quoted, escaped, bounded."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def is_snapshot_id(value: object) -> bool:
    return isinstance(value, str) and SNAPSHOT_ID.fullmatch(value) is not None


def snapshot_started(snapshot_id: str) -> datetime:
    """When a snapshot began, as its id says (`YYYYMMDDTHHMMSSZ-...`, UTC)."""
    return datetime.strptime(snapshot_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def check_snapshot_id(value: str) -> str:
    if not is_snapshot_id(value):
        raise ValueError(f"{shown(value)} is not a snapshot id (YYYYMMDDTHHMMSSZ-xxxxxxxx)")
    return value


def is_source_name(value: object) -> bool:
    return isinstance(value, str) and SOURCE_NAME.fullmatch(value) is not None


def check_source(value: str) -> str:
    if not isinstance(value, str) or SOURCE_NAME.fullmatch(value) is None:
        raise ValueError(f"{shown(value)} is not a source name")
    return value


def split_source(name: str) -> tuple[str, str | None]:
    """`<kind>.<target>` → (kind, target); `<kind>` → (kind, None)."""
    kind, _, target = check_source(name).partition(".")
    return kind, target or None


def check_artifact_name(value: str) -> str:
    """A plain file name: no separator, not `.` or `..`, no control character, not too long."""
    if not isinstance(value, str) or not value:
        raise ValueError("an artifact name is empty")
    if value in (".", "..") or "/" in value or "\\" in value:
        raise ValueError(f"artifact name {shown(value)} is a path, not a file name")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError(f"artifact name {shown(value)} holds a control character")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"artifact name {shown(value)} is not valid UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise ValueError(f"artifact name {shown(value)} is longer than {MAX_NAME_BYTES} bytes")
    return value
