"""Modules readable in one sitting (issue 15): no module over 450 lines, no function over 80, in every stage
package. A function's length runs from its ``def`` to its last line (decorators not counted; nested
functions and methods are counted on their own as well as inside their parent)."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def oversized(folder: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """'path: N lines' for each module over MAX_MODULE_LINES and 'path:line name: N lines' per long function."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        source = path.read_text()
        rel = path.relative_to(root)
        if (n := len(source.splitlines())) > MAX_MODULE_LINES:
            found.append(f"{rel}: {n} lines (module)")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    found.append(f"{rel}:{node.lineno} {node.name}: {n} lines (function)")
    return found


@pytest.mark.parametrize("folder", ["runtime", "models", "edgekit", "export", "train", "serve", "web"])
def test_modules_and_functions_are_readable_in_one_sitting(folder):
    assert (ROOT / folder).is_dir()
    assert not oversized(ROOT / folder), "\n".join(oversized(ROOT / folder))


def test_the_size_check_catches_a_long_function_and_a_long_module(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))  # def line + 80 = 81 lines
    (tmp_path / "long.py").write_text(f"def f():\n{body}\n")
    (tmp_path / "fine.py").write_text("def g():\n    return 1\n" + "# note\n" * (MAX_MODULE_LINES - 2))
    (tmp_path / "big.py").write_text("# note\n" * (MAX_MODULE_LINES + 1))
    assert oversized(tmp_path, tmp_path) == ["big.py: 451 lines (module)", "long.py:1 f: 81 lines (function)"]
