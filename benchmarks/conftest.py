"""Benchmark fixtures: real models (trained here unless paths are given) and the budget gate.

    EDGEKIT_BENCH_GPT=runs/p3/phase3.pt pytest benchmarks/     # use your checkpoint
    pytest benchmarks -m gate                                    # the fast gates `make test` runs

Every benchmark records scheme, threads and model bytes in ``extra_info`` and checks its budgets
(benchmarks/budgets.toml, or the file in $EDGEKIT_BUDGETS) through ``gate``.
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
    """A phase3 checkpoint (yours via EDGEKIT_BENCH_GPT, or a short stdlib run) and its default export."""
    ckpt = os.environ.get("EDGEKIT_BENCH_GPT")
    out = tmp_path_factory.mktemp("bench_phase3")
    if ckpt is None:
        edgekit("train", "phase3", "--out", out, "--tokens", 60000, "--max-iters", 40, "--eval-interval", 20,
                "--quiet")
        ckpt = out / "phase3.pt"
    onnx_path = out / "phase3.onnx"
    edgekit("export", ckpt, "-o", onnx_path, "--quiet")
    return {"ckpt": Path(ckpt), "onnx": onnx_path}
