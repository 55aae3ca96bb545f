"""Budget gates fail loudly: an impossible budget breaks `edgekit bench` and the pytest suite, by name."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from edgekit.budgets import BudgetError, check, load_budgets

ROOT = Path(__file__).resolve().parent.parent


def test_every_budget_has_a_source_and_a_bound():
    budgets = load_budgets()
    assert budgets, "benchmarks/budgets.toml is empty"
    for name, b in budgets.items():
        assert b["source"].strip() and ({"min", "max"} & b.keys()), name


def test_check_names_budget_measured_value_and_source(tmp_path):
    f = tmp_path / "b.toml"
    f.write_text('[gpt]\nfile_bytes = { max = 1, unit = "bytes", source = "an impossible test budget" }\n')
    with pytest.raises(BudgetError, match=r"BROKEN budget gpt.file_bytes: measured 2000 bytes, budget <= 1 bytes "
                                          r"\(source: an impossible test budget\)"):
        check(load_budgets(f), "gpt.file_bytes", 2000)


def test_edgekit_bench_exits_3_on_an_impossible_budget(tmp_path, tiny_soma):
    f = tmp_path / "b.toml"
    f.write_text('[gpt]\nfile_bytes = { max = 1, unit = "bytes", source = "an impossible test budget" }\n'
                 'decode_tokens_per_s = { min = 1, unit = "tok/s", source = "any positive speed" }\n')
    r = run_cli("bench", tiny_soma["onnx"], "--budget", f)
    assert r.exit_code == 3, r.output
    assert "BROKEN budget gpt.file_bytes" in r.stdout and "source: an impossible test budget" in r.stdout
    assert re.search(r"decode_tokens_per_s\s+[\d,.]+\s+>= 1\s+ok", r.stdout)


def test_pytest_gate_fails_with_the_budget_message(tmp_path, tiny_gpt):
    text = (ROOT / "benchmarks" / "budgets.toml").read_text()
    text = re.sub(r"file_bytes_over_fp32 = \{ max = [\d.]+", "file_bytes_over_fp32 = { max = 0.01", text)
    f = tmp_path / "impossible.toml"
    f.write_text(text)
    env = {**os.environ, "EDGEKIT_BUDGETS": str(f), "EDGEKIT_BENCH_GPT": str(tiny_gpt["ckpt"])}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(ROOT / "benchmarks" / "test_gpt.py") + "::test_gpt_default_export_size", "-m", "gate",
                        "--benchmark-min-rounds=1"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 1, r.stdout[-3000:]
    assert "BROKEN budget gpt.file_bytes_over_fp32: measured" in r.stdout
    assert "fp32 (1.0) fails: the default must be quantized" in r.stdout


def test_edgekit_bench_on_the_shipped_model_uses_the_default_budgets():
    """The default budgets (package data) give the shipped soma reference >= 4 budgeted rows, all held."""
    import json

    r = run_cli("bench", ROOT / "examples" / "reference" / "soma-stdlib.onnx", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    budgeted = [row for row in res["rows"] if row["budget"]]
    assert len(budgeted) >= 4 and all(row["source"] and row["ok"] for row in budgeted), res["rows"]
    assert {"file_bytes_over_fp32", "worst_scheme_greedy_agreement", "threads2_vs_threads1",
            "peak_rss_mb", "import_runtime_s"} <= {row["metric"] for row in budgeted}


def test_edgekit_bench_from_a_plain_pip_install(tmp_path):
    """`pip install .` into a fresh venv (no torch, not editable): the default budgets ship as package data,
    `edgekit bench` on the shipped soma gives >= 4 budgeted rows and exits 0, an impossible budget exits 3.
    Run from the checkout's root, where a source `edgekit/` folder could shadow the installed package."""
    import json

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(ROOT)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    edgekit = str(venv / "bin" / "edgekit")
    model = "examples/reference/soma-stdlib.onnx"
    r = subprocess.run([edgekit, "bench", model, "--json"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rows = [row for row in json.loads(r.stdout)["rows"] if row["budget"]]
    assert len(rows) >= 4 and all(row["source"] for row in rows)
    impossible = tmp_path / "impossible.toml"
    impossible.write_text('[gpt]\nimport_runtime_s = { max = 1e-9, unit = "s", source = "impossible" }\n')
    r = subprocess.run([edgekit, "bench", model, "--budget", str(impossible)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 3 and "BROKEN budget gpt.import_runtime_s" in r.stdout, (r.stdout, r.stderr)
    torch_free = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True)
    assert torch_free.returncode != 0  # the plain install pulls no torch
