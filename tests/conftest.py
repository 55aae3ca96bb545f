"""Shared fixtures: tiny real models trained on the stdlib once per session, and a CLI runner."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class Payload:
    """Unpickling this creates ``marker``: the code a malicious checkpoint would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run_cli(*args, input=None, catch=True):
    """Invoke the real CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from edgekit.cli import cli

    runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], input=input, catch_exceptions=catch)


@pytest.fixture(scope="session")
def tiny_gpt(tmp_path_factory):
    """phase1 trained briefly on 4k stdlib tokens, exported at fp32 and int8."""
    out = tmp_path_factory.mktemp("phase1")
    r = run_cli("train", "phase1", "--out", out, "--tokens", 4000, "--max-iters", 60, "--eval-interval", 10, "--lr", 3e-3,
                "--quiet", "--json")
    assert r.exit_code == 0, r.output
    ckpt = out / "phase1.pt"
    fp32 = out / "phase1.fp32.onnx"
    r = run_cli("export", ckpt, "-o", fp32, "--quant", "fp32", "--quiet")
    assert r.exit_code == 0, r.output
    return {"dir": out, "ckpt": ckpt, "fp32": fp32}


@pytest.fixture(scope="session")
def tiny_soma(tmp_path_factory):
    """The small-vocabulary soma preset, briefly trained, exported with the default (auto) scheme."""
    out = tmp_path_factory.mktemp("soma")
    r = run_cli("train", "soma", "--out", out, "--tokens", 30000, "--max-iters", 30, "--eval-interval", 10,
                "--batch-size", 8, "--quiet")
    assert r.exit_code == 0, r.output
    onnx_path = out / "soma.onnx"
    r = run_cli("export", out / "soma.pt", "-o", onnx_path, "--quiet", "--json")
    assert r.exit_code == 0, r.output
    return {"dir": out, "ckpt": out / "soma.pt", "onnx": onnx_path, "report": r.stdout}
