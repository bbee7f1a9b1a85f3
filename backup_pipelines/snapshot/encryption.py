"""age keys: public recipients to encrypt to, private identities to read back.

Encryption uses pyrage (the Rust `age` implementation) so no `age` binary is
needed, and the format stays readable with the standard `age` tool:
`zstd -d < <(age -d -i key.txt crm.dump.zst.age)`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from pyrage import x25519

from backup_pipelines.errors import ConfigurationError


def parse_recipients(keys: Sequence[str]) -> list[x25519.Recipient]:
    """Parse `age1...` public keys; a bad one names its position, never a secret."""
    recipients = []
    for position, key in enumerate(keys, start=1):
        try:
            recipients.append(x25519.Recipient.from_str(key.strip()))
        except Exception:
            raise ValueError(
                f"recipient {position} is not an age public key (expected 'age1...')"
            ) from None
    return recipients


class IdentityMissing(ConfigurationError):
    """A snapshot is encrypted and no identity is configured here: where backups run that
    is by design (they hold only the recipients), so verification skips, saying so."""


def load_identities(path: Path | None) -> list[x25519.Identity]:
    """Read the `AGE-SECRET-KEY-...` lines of an age identity file (as `age-keygen` writes);
    one that every user of the host may read is refused, as ssh refuses such a key."""
    if path is None:
        raise IdentityMissing(
            "this snapshot is encrypted: set BACKUP_AGE_IDENTITY_FILE to the age identity file"
        )
    try:
        with path.open("rb") as stream:
            mode = os.fstat(stream.fileno()).st_mode
            if mode & 0o007:
                raise ConfigurationError(
                    f"BACKUP_AGE_IDENTITY_FILE: {path} can be read by every user (mode "
                    f"{stat.S_IMODE(mode):04o}): it decrypts every backup, so it is not used; "
                    f"chmod 600 {path} (or 640, with a group of its own)"
                )
            text = stream.read().decode("utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"BACKUP_AGE_IDENTITY_FILE: cannot read {path}: {exc.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(
            f"BACKUP_AGE_IDENTITY_FILE: {path} is not an age identity file (it is not text; "
            "age-keygen writes one 'AGE-SECRET-KEY-...' line)"
        ) from None
    identities = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                identities.append(x25519.Identity.from_str(line))
            except Exception:
                raise ConfigurationError(
                    f"BACKUP_AGE_IDENTITY_FILE: {path} holds a malformed age secret key"
                ) from None
    if not identities:
        raise ConfigurationError(f"BACKUP_AGE_IDENTITY_FILE: {path} holds no age secret key")
    return identities


def identities_for(encryption: str | None, identity_file: Path | None) -> list[x25519.Identity]:
    """The identities needed to read a snapshot: none when it is not encrypted."""
    return load_identities(identity_file) if encryption else []
