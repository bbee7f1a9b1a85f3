"""Keeping secrets out of logs, metadata, events and error messages."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

MASK = "***"
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """`scheme://user:secret@host/db` → `scheme://user:***@host/db`.

    Also masks libpq keyword DSNs (`host=db password=secret`) so whatever
    form the operator wrote, what is shown is safe to show.
    """
    url = _KEYWORD_PASSWORD.sub(rf"\g<1>{MASK}", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}{port}"))


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every occurrence of each non-empty secret in `text`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def secret_parts(value: str) -> list[str]:
    """A secret and, when it is a URL with a password, that password on its own.

    An error text may quote the password alone (`password=...`, an auth log
    line), so masking the whole DSN is not enough.
    """
    parts = [value]
    if "," in value and "://" in value:  # several URLs (BACKUP_NOTIFY_URLS): each on its own
        for url in (part.strip() for part in value.split(",")):
            parts += secret_parts(url) if "://" in url else []
        return parts
    try:
        password = urlsplit(value).password
    except ValueError:
        password = None
    match = _KEYWORD_PASSWORD.search(value)
    for found in (password, match.group(2).strip("'") if match else None):
        if found:
            parts.append(found)
    return parts


Location = tuple[str | int, ...]


def validation_problems(exc: ValidationError, where: Callable[[Location], str]) -> list[str]:
    """Each of pydantic's errors as `<where>: <the rule broken>`, never with the input that
    broke it: that may be a secret (a password in a variable, a tampered manifest's bytes)."""
    return [
        f"{where(error['loc'])}: {error['msg'].removeprefix('Value error, ')}"
        for error in exc.errors(include_input=False, include_url=False)
    ]
