"""PostgreSQL's WAL file names, and the positions a segment's name encodes.

A name is untrusted (PostgreSQL passes it, an operator may type it, a store
lists it): it is checked against the shapes PostgreSQL writes before it
reaches a key.
"""

from __future__ import annotations

import re

from backup_pipelines.errors import ConfigurationError
from backup_pipelines.storage.names import shown

WAL_NAME = re.compile(r"[0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history")
"""A segment, the old timeline's last segment left at a promotion (`.partial`), a backup's
label (`.backup`), or a timeline's history (`.history`)."""
SEGMENT = re.compile(r"[0-9A-F]{24}")


def check_wal_name(name: str) -> str:
    if not isinstance(name, str) or WAL_NAME.fullmatch(name) is None:
        raise ConfigurationError(
            f"{shown(name)} is not the name of a WAL file (a segment, or a .partial, .backup or "
            ".history file, as PostgreSQL passes %f)"
        )
    return name


def segment_position(segment: str) -> tuple[int, int]:
    """A segment's (high, low) halves of its number; equal positions on two timelines hold
    the same stretch of WAL."""
    return int(segment[8:16], 16), int(segment[16:24], 16)


def segment_name(timeline: int, number: int, segment_bytes: int) -> str:
    """The name of segment `number` of `timeline` (PostgreSQL's XLogFileName)."""
    per_high = (1 << 32) // segment_bytes
    return f"{timeline:08X}{number // per_high:08X}{number % per_high:08X}"


def segment_number(segment: str, segment_bytes: int) -> int:
    """A segment's number in the WAL of segments of `segment_bytes` (its position, counted)."""
    high, low = segment_position(segment)
    return high * ((1 << 32) // segment_bytes) + low


def segment_start(segment: str, segment_bytes: int) -> int:
    """The LSN (as a number) where `segment` begins."""
    return segment_number(segment, segment_bytes) * segment_bytes
