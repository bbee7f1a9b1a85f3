"""Unpacking a base backup's tar at GNU tar's speed, with every member checked before tar sees it.

Python's tarfile unpacked 225 MiB in about 5x the time of `tar -x`. Here
the plain stream goes to `tar -x` through its stdin, and this process reads
only the 512-byte header of each member on the way (the data passes in
whole slices): a member that would land outside the directory, or is
anything but a file, a folder or a link within it (a device, a long-name
or pax extension pg_basebackup never writes), stops the stream before its
header reaches tar. The tar is the store's, so untrusted like a manifest.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from backup_pipelines.errors import BackupError
from backup_pipelines.processes import running
from backup_pipelines.snapshot.reader import SnapshotReader
from backup_pipelines.storage.names import shown

BLOCK = 512
SPECIAL_MODE_BITS = 0o7000
"""setuid, setgid, sticky: pg_basebackup never writes them, a hostile tar might."""
LEFT_BY_THE_SERVER = ("postmaster.pid", "postmaster.opts")
"""Files a running (or crashed) server leaves in its directory: never restored."""


def untar_artifact(reader: SnapshotReader, artifact: str, directory: Path) -> None:
    """`artifact` of the snapshot, a tar, unpacked into `directory` by `tar -x` as it
    streams from the store; `BackupError` for a member that is refused or a tar that is
    not one, and the read's own error (`IntegrityError`) for damaged stored bytes."""
    excluded = [f"--exclude={name}" for name in LEFT_BY_THE_SERVER]
    command = ["tar", "-x", "-f", "-", "-C", str(directory), "--no-same-owner", "--anchored"]
    command.append("--no-same-permissions")  # the umask applies, as for any user
    label = f"tar -x of {artifact} into {directory}"
    with running([*command, *excluded], label=label, fed=True) as tar:
        reader.feed(artifact, CheckedTar(tar.stdin, artifact), process=tar)


class CheckedTar(io.RawIOBase):
    """Forwards a tar stream to `inner`, reading each member's header first (`checked`).
    Closing it closes `inner`."""

    def __init__(self, inner: BinaryIO, artifact: str):
        self._inner = inner
        self._artifact = artifact
        self._header = bytearray()
        self._data_left = 0  # the current member's data, padded to whole blocks, still to pass
        self._ended = False  # after the end-of-archive block, everything passes

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        view = memoryview(data)
        count = len(view)
        while view:
            if self._ended:
                self._inner.write(view)
                break
            if self._data_left:
                passing = min(self._data_left, len(view))
                self._inner.write(view[:passing])
                view, self._data_left = view[passing:], self._data_left - passing
                continue
            missing = BLOCK - len(self._header)
            self._header += view[:missing]
            view = view[missing:]
            if len(self._header) == BLOCK:
                header, self._header = bytes(self._header), bytearray()
                self._data_left = self._member_data(header)
                self._inner.write(header)
        return count

    def _member_data(self, header: bytes) -> int:
        """The bytes of data that follow `header`, once the member proved acceptable."""
        try:
            member = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.EOFHeaderError:
            self._ended = True
            return 0
        except tarfile.HeaderError as exc:
            raise BackupError(f"{self._artifact} is not a valid tar ({exc})") from None
        checked(member, self._artifact)
        return -(-member.size // BLOCK) * BLOCK if member.isfile() else 0

    def close(self) -> None:
        super().close()
        self._inner.close()


def checked(member: tarfile.TarInfo, artifact: str) -> tarfile.TarInfo:
    """A member that stays inside the directory: a file, a folder, or a link within it."""
    path = PurePosixPath(member.name)
    escapes = path.is_absolute() or ".." in path.parts
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = path.parent if member.issym() else PurePosixPath()
        escapes |= target.is_absolute() or ".." in (base / target).parts
    elif not (member.isfile() or member.isdir()):
        escapes = True
    escapes |= bool(member.mode & SPECIAL_MODE_BITS)
    if escapes:
        raise BackupError(
            f"{artifact} holds {shown(member.name)}, which would land outside the data "
            "directory, is not a plain file or folder, or asks for setuid, setgid or sticky "
            "bits (a tablespace is not restored this way)"
        )
    return member
