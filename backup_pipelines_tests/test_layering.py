"""The shape of the package holds: the core imports nothing from Dagster (the command works
with Dagster down, and its import stays cheap), only `storage/layout.py` spells where things
live in a store, and only the operations publish events or write audit records."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "backup_pipelines"
DAGSTER_SIDE = ("dagster_defs", "definitions.py", "verification.py")
"""The Dagster adapters, and the two code locations the contract names."""
TREES = {path: ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}
"""Every module's syntax tree, parsed once as the tests are collected: Python 3.11's parser
is not safe beside another thread that parses (`SystemError: AST constructor recursion depth
mismatch`), and a worker's earlier tests may leave such threads running."""


def modules(*, dagster_side: bool) -> list[str]:
    """Every module of the package on one side of the line, by its dotted name."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in DAGSTER_SIDE or relative.name == "__main__.py":
            if not dagster_side:
                continue
        elif dagster_side:
            continue
        parts = ["backup_pipelines", *relative.with_suffix("").parts]
        found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def imported_names(path: Path) -> set[str]:
    """The top-level packages a module imports, wherever in it (lazy imports count too)."""
    names = set()
    for node in ast.walk(TREES[path]):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_core_module_imports_dagster_even_through_another():
    core = modules(dagster_side=False)
    assert "backup_pipelines.operations.restore" in core and len(core) > 50
    probe = (
        "import importlib, json, sys\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] not in DAGSTER_SIDE:
            assert "dagster" not in imported_names(path), path


def test_wal_push_imports_neither_the_sources_nor_dagster():
    """PostgreSQL starts it once per WAL file: what it loads is what every file waits for."""
    probe = (
        "import json, sys\n"
        "from backup_pipelines.cli import wal\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout
    )
    assert not [m for m in loaded if m.startswith(("backup_pipelines.sources", "dagster", "pika"))]


LAYOUT_WORDS = [
    r"\.audit\b",
    r"\.verification\b",
    r"postgres_wal[\"'/.]",
    r"\.staging",
    r"\.outbox",
]
"""Names of places in a store (or beside a local one) as a string would spell them."""


@pytest.mark.parametrize("word", LAYOUT_WORDS)
def test_only_the_layout_spells_where_things_live_in_a_store(word):
    literal = re.compile(rf"[\"'/]{word}")
    spelled = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE) != Path("storage/layout.py")
        and any(literal.search(text) for text in string_literals(path))
    )
    assert spelled == []


def string_literals(path: Path) -> list[str]:
    """The module's strings, docstrings left out (they may say where things live)."""
    tree = TREES[path]
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        f'"{node.value}"'
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def side_effects(path: Path) -> list[str]:
    """The calls in a module that publish an event, write an audit record, or make an audit
    log: `<x>.publish(...)`, `<x>.audit.append(...)`, `<x>.audit.operation(...)`,
    `AuditLog(...)`."""
    found = []
    for node in ast.walk(TREES[path]):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "AuditLog":
            found.append("AuditLog(...)")
        if not isinstance(func, ast.Attribute):
            continue
        owner = func.value
        owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
        if func.attr == "publish" or (
            owner_name == "audit" and func.attr in ("append", "operation")
        ):
            found.append(f"{owner_name}.{func.attr}(...)")
    return found


def test_only_the_operations_publish_events_and_write_audit_records():
    """Each operation's side effects in one place: its own module under `operations/`. The
    audit log is made once, by the services."""
    places = {str(path.relative_to(PACKAGE)): side_effects(path) for path in PACKAGE.rglob("*.py")}
    assert places["operations/restore.py"] and places["operations/backup.py"]
    outside = {
        place: calls
        for place, calls in places.items()
        if calls and not place.startswith("operations/")
    }
    assert outside == {"services.py": ["AuditLog(...)"]}
