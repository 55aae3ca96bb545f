"""The family contract, checked over every registered family: runtime hooks, a CLI writer, clean stage
boundaries (the runtime never prints, never imports models/, train/, export/ or torch)."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

from edgekit.present import WRITERS
from edgekit.registry import FAMILIES
from edgekit.runtime import family_runtime

RUNTIME = pathlib.Path(__file__).resolve().parent.parent / "runtime"
HOOKS = ("load", "bench_metrics", "bench_workload", "weight_group", "serve_routes")  # serve_engine: generators only


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_implements_the_runtime_hooks_and_has_an_infer_writer(family):
    module = family_runtime(family)
    missing = [h for h in HOOKS if not callable(getattr(module, h, None))]
    assert not missing, f"{module.__name__} lacks {missing}"
    assert family in WRITERS
    assert isinstance(module.weight_group("some.weight"), str)


def test_unknown_family_is_one_clear_error():
    from edgekit.errors import ModelFileError

    with pytest.raises(ModelFileError, match="family 'foo' is not known to this edgekit; known: gpt, seqae, amn, bytecnn"):
        family_runtime("foo", path="x.onnx")


def test_runtime_never_prints():
    """No print() call and no sys.stdout/sys.stderr in runtime/ (the CLI writes; docstrings may show print)."""
    found = []
    for path in sorted(RUNTIME.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                found.append(f"{path.name}:{node.lineno} print")
            if isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr") \
                    and isinstance(node.value, ast.Name) and node.value.id == "sys":
                found.append(f"{path.name}:{node.lineno} sys.{node.attr}")
    assert not found


def test_runtime_imports_no_other_stage_and_no_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
            "import edgekit.runtime, edgekit.runtime.bench\n"
            f"for f in {list(FAMILIES)!r}: edgekit.runtime.family_runtime(f)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[:2] in "
            "(['edgekit', 'models'], ['edgekit', 'train'], ['edgekit', 'export']) or m == 'torch' and sys.modules[m])\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
