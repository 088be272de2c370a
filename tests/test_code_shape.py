"""The code's shape: no function in `src/` over 100 lines, no module over 500.

A long function hides its steps and a long module its parts (issue 24); this counts them with
`ast`, so a decorator or a docstring counts as part of its function, as a reader sees it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "feedbackgen"
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 500


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`module:line name (N lines)` for every function or method of `path` longer than `limit`
    lines, decorators included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines = node.end_lineno - start + 1
            if lines > limit:
                out.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_the_checker_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{n} = {n}" for n in range(MAX_FUNCTION_LINES))
    short, long = tmp_path / "short.py", tmp_path / "long.py"
    short.write_text(f"def f():\n{body}\n".replace(f"    x{MAX_FUNCTION_LINES - 1} = {MAX_FUNCTION_LINES - 1}\n", ""))
    long.write_text(f"@staticmethod\ndef f():\n{body}\n")
    global SRC
    saved, SRC = SRC, tmp_path / "pkg"
    try:
        assert long_functions(short) == []
        assert [x.split()[1] for x in long_functions(long)] == ["f"]
    finally:
        SRC = saved


def test_no_function_over_100_lines():
    found = [f for path in _modules() for f in long_functions(path)]
    assert not found, "functions over 100 lines (split them into named steps):\n" + "\n".join(found)


def test_no_module_over_500_lines():
    found = [f"{p.relative_to(SRC.parent)} ({n} lines)" for p in _modules()
             if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not found, "modules over 500 lines (split them by topic):\n" + "\n".join(found)
