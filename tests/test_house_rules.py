"""Rules a newcomer can count on, measured on the code: short functions, a README read in minutes,
and docs and code that speak of the project as it is (dated measurements live in bench/results.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "extract", "fusion_search", "stores")


def test_no_function_is_longer_than_50_lines():
    long = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1  # from `def` to its last line, decorators not counted
                    if lines > 50:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == [], "split these: " + "; ".join(long)


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 120


def test_no_history_words_in_docs_and_code():
    """Words that only a lab notebook needs; bench/results.md is the one dated record."""
    words = re.compile(r"\b(session|previous machine|earlier machine)\b", re.I)
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += [p for pkg in (*PACKAGES, "bench") for p in sorted((ROOT / pkg).rglob("*.py"))]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
            if words.search(line)]
    assert hits == [], hits
