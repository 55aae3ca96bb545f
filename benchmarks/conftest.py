"""Benchmark fixtures: real models (trained here unless paths are given) and the budget gate.

    EDGEKIT_BENCH_GPT=runs/p3/phase3.pt pytest benchmarks/     # your checkpoint (default: shipped soma)
    pytest benchmarks -m gate                                    # the fast gates `make test` runs

Every benchmark records scheme, threads and model bytes in ``extra_info``, checks its answer against an
independent reference in the same test (benchmarks/checks.py) and its budgets (benchmarks/budgets.toml,
or the file in $EDGEKIT_BUDGETS) through ``gate``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.budgets import BudgetError, check, describe, evaluate, load_budgets

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    config.addinivalue_line("markers", "gate: fast budget gates run by `make test`")


def edgekit(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "edgekit.cli", *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"edgekit {' '.join(map(str, args))} failed: {r.stderr.strip()[-500:]}")


@pytest.fixture(scope="session")
def budgets():
    return load_budgets()


@pytest.fixture
def gate(budgets, benchmark):
    """gate(name, measured): record the value beside its budget in extra_info, fail with a message if broken."""

    def _gate(name: str, measured: float) -> None:
        b = budgets[name]
        benchmark.extra_info.setdefault("budgets", {})[name] = {
            "measured": float(measured), **{k: b[k] for k in ("min", "max") if k in b}, "unit": b.get("unit", ""),
            "source": b["source"], "ok": evaluate(b, measured)}
        if not evaluate(b, measured):
            raise BudgetError("BROKEN " + describe(name, b, measured))
        check(budgets, name, measured)

    return _gate


@pytest.fixture(scope="session")
def gpt_artifacts(tmp_path_factory):
    """A trained GPT checkpoint (yours via EDGEKIT_BENCH_GPT, else the shipped soma reference trained on
    the whole stdlib, examples/reference/soma-stdlib.pt) and its default export, made here by this code."""
    ckpt = Path(os.environ.get("EDGEKIT_BENCH_GPT") or ROOT / "examples" / "reference" / "soma-stdlib.pt")
    out = tmp_path_factory.mktemp("bench_gpt")
    onnx_path = out / (ckpt.stem + ".onnx")
    edgekit("export", ckpt, "-o", onnx_path, "--quiet")
    return {"ckpt": ckpt, "onnx": onnx_path}
