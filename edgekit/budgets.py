"""Budgets: one TOML file (benchmarks/budgets.toml, shipped as edgekit/budgets.toml), every budget with its source. Used by the pytest suite and `edgekit bench`.

    budgets = load_budgets()                      # benchmarks/budgets.toml
    check(budgets, "gpt.decode_speedup_vs_torch", measured=11.3)   # raises BudgetError naming all three
"""
from __future__ import annotations

import os
from pathlib import Path

import tomllib

# The one budgets file is benchmarks/budgets.toml; edgekit/budgets.toml links to it so the wheel ships a
# copy as package data (setuptools copies the link's target) and `edgekit bench` works from `pip install .`.
DEFAULT = Path(__file__).resolve().parent / "budgets.toml"


class BudgetError(AssertionError):
    """A measured value broke its budget."""


def load_budgets(path: str | os.PathLike | None = None) -> dict:
    """Flatten ``[family.name]`` tables into {"family.name": {min|max, unit, source}}."""
    from edgekit.limits import LIMITS, json_depth

    with open(path or os.environ.get("EDGEKIT_BUDGETS", DEFAULT), "rb") as f:
        data = tomllib.load(f)
    if json_depth(data, LIMITS.toml_depth) > LIMITS.toml_depth:
        raise ValueError(f"tables nested more than {LIMITS.toml_depth} levels deep (budgets use 2)")
    out = {}
    for family, table in data.items():
        if not isinstance(table, dict):
            raise ValueError(f"{family!r} must be a table of budgets ([family] then name = {{max = ..., source = ...}})")
        for name, b in table.items():
            if not isinstance(b, dict) or not ({"min", "max"} & b.keys()) or "source" not in b:
                raise ValueError(f"budget {family}.{name} needs min or max and a source")
            bad = [k for k in ("min", "max") if k in b and (isinstance(b[k], bool) or not isinstance(b[k], (int, float)))]
            if bad or not isinstance(b["source"], str) or not isinstance(b.get("unit", ""), str):
                raise ValueError(f"budget {family}.{name}: min and max must be numbers, source and unit text")
            out[f"{family}.{name}"] = b
    return out


def evaluate(budget: dict, measured: float) -> bool:
    ok = True
    if "min" in budget:
        ok &= measured >= budget["min"]
    if "max" in budget:
        ok &= measured <= budget["max"]
    return bool(ok)


def describe(name: str, budget: dict, measured: float) -> str:
    bound = " and ".join(f"{'>=' if k == 'min' else '<='} {budget[k]:g}" for k in ("min", "max") if k in budget)
    unit = budget.get("unit", "")
    return f"budget {name}: measured {measured:.4g} {unit}, budget {bound} {unit} (source: {budget['source']})"


def check(budgets: dict, name: str, measured: float) -> str:
    """Return the description when the budget holds; raise BudgetError with it when broken."""
    if name not in budgets:
        raise KeyError(f"no budget named {name!r} in the budgets file")
    text = describe(name, budgets[name], measured)
    if not evaluate(budgets[name], measured):
        raise BudgetError("BROKEN " + text)
    return text
