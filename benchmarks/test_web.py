"""Browser gates (issue 23): on the default GPT (the shipped soma, or $EDGEKIT_BENCH_GPT) exported with
`--target web` (auto), wasm decode against the Python runtime on the same file, greedy agreement, and the
site's size gzipped (model plus runtime). Every web scheme's row: `python benchmarks/web_bench.py CKPT`."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import ROOT, edgekit
from web_bench import measure, site_gzip_bytes

pytestmark = pytest.mark.gate


@pytest.fixture(scope="module")
def web_file(tmp_path_factory):
    ckpt = Path(os.environ.get("EDGEKIT_BENCH_GPT") or ROOT / "examples" / "reference" / "soma-stdlib.pt")
    out = tmp_path_factory.mktemp("bench_web") / (ckpt.stem + "-web.onnx")
    edgekit("export", ckpt, "--target", "web", "-o", out, "--threads", "1", "--quiet")
    return out


def test_web_decode_vs_native_and_site_size(benchmark, gate, web_file):
    figures = benchmark.pedantic(measure, args=(web_file,), kwargs={"rounds": 5}, rounds=1, iterations=1)
    benchmark.extra_info.update({**figures, "threads": 1})
    assert figures["agreement"] == 1.0, f"wasm greedy tokens differ from Python's on {figures}"  # the answer
    gate("gpt.web_decode_vs_native", figures["wasm_vs_native"])
    size = site_gzip_bytes(web_file)
    benchmark.extra_info["site_gzip_bytes"] = size
    gate("gpt.web_site_gzip_bytes", size)
