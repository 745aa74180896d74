"""Rewrites imports of the top-level ``api`` and ``cli`` packages to ``blo_vault.api/cli``.

One-off migration (issue 15): the wheel installs the source folders api/ and cli/ under the
``blo_vault`` namespace (setup.py), so code and tests import them by those names. Branches
written before the change still say ``from api.app import ...``: after merging one, run

    python3 scripts/rename_to_namespace.py

from the repository root. It is idempotent, touches only tracked files (Python, pyproject.toml,
README.md), and rewrites only ``api.X`` / ``cli.X`` where X is a module or subpackage that
exists in that folder now (so ``tests.api.test_x``, ``api/app.py`` and a test fixture's
``api.client`` are left alone), plus ``from api import ...`` / ``import cli`` statements.
The rewritten files then get ruff's import sorting and formatting (longer names can move an
import to another line), when .venv/bin/ruff exists.
Delete this script once no branch from before the rename is left.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("api", "cli")
PATTERNS = ("*.py", "pyproject.toml", "README.md")


def _modules(folder: Path) -> list[str]:
    """Names of the modules and subpackages directly in ``folder``."""
    names = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    return sorted(names)


def _rules() -> list[tuple[re.Pattern[str], str]]:
    rules = []
    for name in FOLDERS:
        modules = "|".join(map(re.escape, _modules(ROOT / name)))
        # api.app, "api.asgi:app", ``api.errors``: not after a word, dot, slash or dash.
        rules.append((re.compile(rf"(?<![\w./-]){name}(?=\.(?:{modules})\b)"), f"blo_vault.{name}"))
        # from api import errors / import cli
        rules.append(
            (re.compile(rf"^(\s*(?:from|import)\s+){name}\b(?!\.)", re.M), rf"\1blo_vault.{name}")
        )
    return rules


def main() -> int:
    """Rewrite every tracked file that needs it; print what changed."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--", *PATTERNS],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    rules = _rules()
    this = Path(__file__).resolve()
    rewritten = []
    for name in filter(None, files):
        path = ROOT / name
        if path.resolve() == this or not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        new = text
        for pattern, replacement in rules:
            new = pattern.sub(replacement, new)
        if new != text:
            path.write_text(new, encoding="utf-8")
            rewritten.append(name)
            print(f"rewrote {name}")
    ruff = ROOT / ".venv" / "bin" / "ruff"
    python = [name for name in rewritten if name.endswith(".py")]
    if python and ruff.exists():
        subprocess.run([ruff, "check", "--quiet", "--fix", "--select", "I", *python], cwd=ROOT)
        subprocess.run([ruff, "format", "--quiet", *python], cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
