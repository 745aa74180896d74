"""Size limits of the code (issue 15): no module over 600 lines in the core, no function over
80 lines anywhere outside tests and migrations. Small modules and functions are what lets the
next engineer find where an operation lives and read it whole."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Folders whose functions are held to FUNCTION_LINES; add a folder here to hold it too.
CHECKED_FOLDERS = ("vault", "api", "cli", "bench")
# Folders whose modules are held to MODULE_LINES.
MODULE_FOLDERS = ("vault",)
MODULE_LINES = 600
FUNCTION_LINES = 80
# Schema migrations are written once and never edited: exempt, as the issue says.
EXEMPT_PARTS = frozenset({"migrations", "tests"})


def sources(folders: tuple[str, ...]) -> list[Path]:
    """Every Python file under ``folders``, migrations and tests left out."""
    return sorted(
        path
        for folder in folders
        for path in (ROOT / folder).rglob("*.py")
        if not EXEMPT_PARTS & set(path.relative_to(ROOT).parts)
    )


def long_functions(path: Path, limit: int, root: Path = ROOT) -> list[str]:
    """``path:line name (n lines)`` for each function or method longer than ``limit`` lines,
    decorators included; ``path`` is shown relative to ``root``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - start + 1
            if length > limit:
                found.append(f"{path.relative_to(root)}:{start} {node.name} ({length} lines)")
    return found


def test_the_folders_hold_code() -> None:
    """The checks below can fail: the folders they walk exist and hold Python files."""
    for folder in CHECKED_FOLDERS + MODULE_FOLDERS:
        assert sources((folder,)), folder


@pytest.mark.parametrize("folder", MODULE_FOLDERS)
def test_no_module_over_the_line_limit(folder: str) -> None:
    too_long = [
        f"{path.relative_to(ROOT)} ({lines} lines)"
        for path in sources((folder,))
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MODULE_LINES
    ]
    assert too_long == [], f"modules over {MODULE_LINES} lines"


@pytest.mark.parametrize("folder", CHECKED_FOLDERS)
def test_no_function_over_the_line_limit(folder: str) -> None:
    too_long = [
        found for path in sources((folder,)) for found in long_functions(path, FUNCTION_LINES)
    ]
    assert too_long == [], f"functions over {FUNCTION_LINES} lines"


def test_the_function_check_sees_a_long_function(tmp_path: Path) -> None:
    """A function one line over the limit is reported, one at the limit is not."""
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LINES - 1))
    sample = tmp_path / "sample.py"
    sample.write_text(f"def at_limit():\n{body}\n\n\ndef over():\n{body}\n    y = 0\n")
    assert long_functions(sample, FUNCTION_LINES, root=tmp_path) == [
        f"sample.py:{FUNCTION_LINES + 3} over ({FUNCTION_LINES + 1} lines)"
    ]
