"""`globals.sql` (pg_dumpall's roles, memberships, role settings and tablespaces) read as data,
never run as a script.

A snapshot is untrusted input: whoever can write the store can plant one
whose `globals.sql` holds psql meta-commands (`\\! id` runs a shell as the
restoring user) or any SQL at all. So the file is split into statements
here (quotes, identifiers, dollar quotes and comments followed), and each
must have one of the shapes pg_dumpall writes: `CREATE ROLE`, `ALTER ROLE`
(attributes, password, settings), `COMMENT ON ROLE`, role membership
`GRANT`s, `GRANT ... ON PARAMETER`, and tablespaces. A meta-command other
than pg_dump's own `\\restrict`/`\\unrestrict` markers, or any other
statement, refuses the whole file before anything is applied, naming it
(by its first words: a password never shows). A role setting that loads a
library at login (`*_preload_libraries`, `dynamic_library_path`) is refused
too. The statements then run one by one through psycopg, not psql.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from backup_pipelines.errors import IntegrityError

IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
LITERAL = r"(?:'(?:[^']|'')*')"
ROLE_ATTRIBUTE = (
    r"(?:NO)?(?:SUPERUSER|INHERIT|CREATEROLE|CREATEDB|LOGIN|REPLICATION|BYPASSRLS)"
    rf"|CONNECTION LIMIT -?\d+|(?:ENCRYPTED )?PASSWORD (?:{LITERAL}|NULL)|VALID UNTIL {LITERAL}"
)
SETTING_VALUE = rf"(?:{LITERAL}|{IDENT}|-?[\d.]+[A-Za-z]*)"
SHAPES = {
    "session": re.compile(
        r"SET (?:default_transaction_read_only|client_encoding|standard_conforming_strings)"
        rf" (?:=|TO) {SETTING_VALUE}"
    ),
    "create role": re.compile(rf"CREATE ROLE (?P<role>{IDENT})"),
    "role attributes": re.compile(rf"ALTER ROLE (?P<role>{IDENT}) WITH(?: (?:{ROLE_ATTRIBUTE}))+"),
    "role setting": re.compile(
        rf"ALTER ROLE (?P<role>{IDENT})(?: IN DATABASE {IDENT})? SET (?P<setting>{IDENT})"
        rf" (?:=|TO) {SETTING_VALUE}(?:, ?{SETTING_VALUE})*"
    ),
    "role comment": re.compile(rf"COMMENT ON ROLE {IDENT} IS {LITERAL}"),
    "membership": re.compile(
        rf"GRANT {IDENT} TO {IDENT}(?: WITH (?:ADMIN|INHERIT|SET) (?:OPTION|TRUE|FALSE)"
        rf"(?:, ?(?:ADMIN|INHERIT|SET) (?:OPTION|TRUE|FALSE))*)?(?: GRANTED BY {IDENT})?"
    ),
    "parameter grant": re.compile(
        rf"GRANT (?:ALL|SET|ALTER SYSTEM)(?:, ?(?:SET|ALTER SYSTEM))* ON PARAMETER {IDENT}"
        rf" TO {IDENT}(?: WITH GRANT OPTION)?(?: GRANTED BY {IDENT})?"
    ),
    "tablespace": re.compile(rf"CREATE TABLESPACE {IDENT} OWNER {IDENT} LOCATION {LITERAL}"),
    "tablespace option": re.compile(rf"ALTER TABLESPACE {IDENT} (?:SET \(.*\)|OWNER TO {IDENT})"),
    "tablespace comment": re.compile(rf"COMMENT ON TABLESPACE {IDENT} IS {LITERAL}"),
    "tablespace grant": re.compile(
        rf"GRANT (?:ALL|CREATE) ON TABLESPACE {IDENT} TO {IDENT}(?: WITH GRANT OPTION)?"
    ),
}
REFUSED_SETTINGS = {
    "session_preload_libraries",
    "local_preload_libraries",
    "shared_preload_libraries",
    "dynamic_library_path",
}
DUMP_MARKERS = ("\\restrict ", "\\unrestrict ")
"""pg_dump's own meta-commands (since 15.14): they forbid other meta-commands while restoring."""
DOLLAR_TAG = re.compile(r"\$[A-Za-z_]*\$")


class GlobalsRefused(IntegrityError):
    """globals.sql holds something pg_dumpall does not write: nothing of it is applied."""


def role_statements(text: str) -> list[tuple[str, str]]:
    """(kind, statement) of every statement to apply, in order; `GlobalsRefused` naming the
    first one that has none of pg_dumpall's shapes (the session settings are left out: the
    connection has its own)."""
    found = []
    for statement in split_statements(text):
        kind = _shape_of(statement)
        if kind is None:
            raise GlobalsRefused(
                f"globals.sql holds a statement pg_dumpall does not write ({shown(statement)}): "
                "nothing of it is applied (was the snapshot planted?)"
            )
        if kind == "role setting":
            setting = SHAPES[kind].fullmatch(statement)["setting"].strip('"').lower()  # type: ignore[index]
            if setting in REFUSED_SETTINGS:
                raise GlobalsRefused(
                    f"globals.sql sets {setting} for a role ({shown(statement)}): a library "
                    "loaded at login is code, so nothing of it is applied"
                )
        if kind != "session":
            found.append((kind, statement))
    return found


def role_of(kind: str, statement: str) -> str | None:
    """The role a `CREATE ROLE` or `ALTER ROLE` statement is about, unquoted."""
    if kind not in ("create role", "role attributes", "role setting"):
        return None
    role = SHAPES[kind].fullmatch(statement)["role"]  # type: ignore[index]
    return role[1:-1].replace('""', '"') if role.startswith('"') else role


def _shape_of(statement: str) -> str | None:
    for kind, shape in SHAPES.items():
        if shape.fullmatch(statement):
            return kind
    return None


def shown(statement: str) -> str:
    """A statement by its first words, cut before any string literal (a password hash)."""
    words = statement.split("'", 1)[0].split()[:5]
    return " ".join(words)[:80] + " …"


def split_statements(text: str) -> Iterator[str]:
    """The statements of `text`, each on one line with its `;` removed, comments dropped and
    the space between words made single (never inside a quoted string); `GlobalsRefused` at a
    psql meta-command (other than pg_dump's markers) or at text left unterminated."""
    pieces: list[tuple[str, bool]] = []  # (text, quoted)
    i, end = 0, len(text)
    while i < end:
        char = text[i]
        if char == "\\" and not _joined(pieces):
            line_end = text.find("\n", i)
            line = text[i : end if line_end < 0 else line_end]
            if not line.startswith(DUMP_MARKERS):
                raise GlobalsRefused(
                    f"globals.sql holds the psql meta-command {line.split()[0][:20]!r}: "
                    "nothing of it is applied (was the snapshot planted?)"
                )
            i = end if line_end < 0 else line_end + 1
        elif text.startswith("--", i):
            line_end = text.find("\n", i)
            i = end if line_end < 0 else line_end + 1
            pieces.append((" ", False))
        elif text.startswith("/*", i):
            close = text.find("*/", i + 2)
            if close < 0:
                raise GlobalsRefused("globals.sql ends inside a comment")
            i = close + 2
            pieces.append((" ", False))
        elif char in "'\"":
            close = _closing_quote(text, i, char) + 1
            pieces.append((text[i:close], True))
            i = close
        elif char == "$" and (tag := DOLLAR_TAG.match(text, i)):
            close = text.find(tag.group(), tag.end())
            if close < 0:
                raise GlobalsRefused("globals.sql ends inside a dollar-quoted string")
            pieces.append((text[i : close + len(tag.group())], True))
            i = close + len(tag.group())
        elif char == ";":
            if statement := _joined(pieces):
                yield statement
            pieces = []
            i += 1
        else:
            pieces.append((char, False))
            i += 1
    if _joined(pieces):
        raise GlobalsRefused("globals.sql ends in the middle of a statement")


def _joined(pieces: list[tuple[str, bool]]) -> str:
    """The statement so far: single spaces between words, quoted text as it was."""
    out, plain = [], []
    for piece, quoted in pieces:
        if quoted:
            out.append(_squeeze(plain))
            out.append(piece)
            plain = []
        else:
            plain.append(piece)
    out.append(_squeeze(plain))
    return "".join(out).strip()


def _squeeze(plain: list[str]) -> str:
    """Unquoted text with every run of white space made one space (kept at the ends)."""
    text = "".join(plain)
    words = text.split()
    if not words:
        return " " if text else ""
    lead = " " if text[0].isspace() else ""
    trail = " " if text[-1].isspace() else ""
    return lead + " ".join(words) + trail


def _closing_quote(text: str, start: int, quote: str) -> int:
    """Where the quoted text opened at `start` closes (a doubled quote stays inside)."""
    i = start + 1
    while True:
        close = text.find(quote, i)
        if close < 0:
            raise GlobalsRefused("globals.sql ends inside a quoted string")
        if text.startswith(quote * 2, close):
            i = close + 2
            continue
        return close
