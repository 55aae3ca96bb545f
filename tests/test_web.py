"""The browser runtime against the Python runtime, on real files: `edgekit export --target web`, the JS
tokenizer, ModelCard reader and runtime under Node (onnxruntime-node and onnxruntime-web's wasm), and the
site `edgekit web` writes, loaded from a 127.0.0.1 server in headless Chromium.

Python writes the expectations (its own tokens) into one JSON file; `node --test web/test/` and
web/browser.mjs check against it. Needs `make install` (npm ci in web/) and Debian's chromium (`make test`
installs it when missing).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import run_cli
from edgekit.runtime import load
from edgekit.runtime.tokenizer import bpe_spec, from_spec, gpt2_ranks
from edgekit.web.browser import run_pages, static_server
from test_modelcard import REFUSED, SOMA

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"

# 20 greedy prompts: code, prose, healing cases ("import ", "    "), unicode, one longer than the block
GREEDY = ["def get_", "import ", "class Foo(", "    return ", "for i in range(", "if __name__ == ", "self.", "# ",
          "from collections import ", "try:\n    ", "raise ValueError(", "with open(", "x = [", "def __init__(self, ",
          "print('h\u00e9llo w\u00f6rld', ", "\"\"\"Return the ", "while True:\n", "lambda x: ", "async def run(",
          "def f(x):\n" * 30]
# seeded sampling: the in-graph sampler (top-k, top-p), the numpy path (temperature only), the penalty
SAMPLED = [("import ", {"temperature": 0.8, "top_k": 40, "seed": 1}),
           ("def get_", {"temperature": 1.0, "top_k": 20, "top_p": 0.9, "seed": 7}),
           ("class ", {"temperature": 0.9, "seed": 3}),
           ("x = ", {"temperature": 0.7, "top_p": 0.9, "seed": 5, "repeat_penalty": 1.3}),
           ("self.", {"temperature": 1.2, "top_k": 5, "seed": 12345}),
           ("# ", {"temperature": 0.6, "seed": 0}),
           ("return ", {"temperature": 0.8, "top_k": 40, "repeat_penalty": 1.2, "seed": 2**40 + 3}),
           ("for ", {"temperature": 0.5, "top_k": 100, "seed": 99, "max_new_tokens": 150})]
OTHER = [("def f(", {"stop": ["):"]}), ("import os\n", {"heal": False, "max_new_tokens": 12}),
         ("def f(x):\n" * 30, {"window": "exact", "max_new_tokens": 40})]
TEXTS = ["def get_value(self, key):\n    return self._data[key]\n", "  trailing   spaces \t\n\n\r\n",
         "h\u00e9llo w\u00f6rld \u00e7a va? \u4f60\u597d\uff0c\u4e16\u754c \U0001f600\U0001f680 \u0645\u0631\u062d\u0628\u0627",
         "e\u0301 combining, NEL\u0085here, BOM\ufeffthere, nbsp\u00a0x, 1234567 3.14e-10 0x1F",
         "it's we're they'll I'd you've SHOUTING'S <|endoftext|> tokens", ""]


def stdlib_text(n_files: int = 6, chars: int = 20000) -> list[str]:
    """Real text: the head of a few standard-library modules."""
    import email.message
    import json as json_mod
    import textwrap
    import unicodedata  # noqa: F401 (a C module: skipped below)
    import urllib.parse
    import argparse
    import string

    out = []
    for mod in (json_mod.decoder, textwrap, urllib.parse, argparse, string, email.message)[:n_files]:
        out.append(Path(mod.__file__).read_text(encoding="utf-8")[:chars])
    return out


def _generation(lm, prompt, options):
    g = lm.generate(prompt, **{"max_new_tokens": 32, **options})
    return {"prompt": prompt, "options": {"max_new_tokens": 32, **options}, "token_ids": g.token_ids, "text": g.text,
            "stop_reason": g.stop_reason}


def _tokenizer_case(name: str, spec: dict) -> dict:
    tok = from_spec(spec)
    texts = TEXTS + stdlib_text()
    ids = [tok.encode(t) for t in texts]
    probe = sorted({i for row in ids for i in row[:40]})[:60]
    return {"name": name, "spec": spec, "n_vocab": tok.n_vocab, "eot_id": tok.eot_id, "texts": texts, "ids": ids,
            "decoded": [tok.decode(r) for r in ids],
            "prefix_ids": [[i, sorted(tok.ids_with_prefix(tok.token_bytes(i)))] for i in probe]}


def _card_case(path: Path) -> dict:
    c = load(path, threads=1).card
    return {"path": str(path), "expected": {
        "family": c.family, "block_size": c.block_size, "vocab_size": c.vocab_size, "eot_id": c.eot_id,
        "window_keep": c.window_keep, "edgekit_version": c.edgekit_version,
        "deploy": {"target": c.deploy.target, "numerics": c.deploy.numerics,
                   "session_config": dict(c.deploy.session_config)},
        "generation": {"max_new_tokens": c.generation.max_new_tokens, "temperature": c.generation.temperature}}}


@pytest.fixture(scope="module")
def soma_web(tmp_path_factory):
    """The shipped soma checkpoint exported for the web (int8: the web's int8-weights)."""
    out = tmp_path_factory.mktemp("web") / "soma-web.onnx"
    r = run_cli("export", ROOT / "examples" / "reference" / "soma-stdlib.pt", "--target", "web", "--quant", "int8",
                "-o", out, "--threads", "1", "--quiet", "--json")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def gpt2_web(tiny_gpt, tmp_path_factory):
    """A GPT-2-vocabulary model (the tiny phase1) exported for the web: its 50,257 ranks travel inline."""
    out = tmp_path_factory.mktemp("web") / "phase1-web.onnx"
    r = run_cli("export", tiny_gpt["ckpt"], "--target", "web", "--quant", "fp32", "-o", out, "--quiet")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def cases(soma_web, gpt2_web, tmp_path_factory):
    """Python's answers for every check, in one JSON file (EDGEKIT_WEB_CASES)."""
    d = tmp_path_factory.mktemp("cases")
    soma = load(soma_web, threads=1)
    gpt2 = load(gpt2_web, threads=1)
    models = [{"path": str(soma_web), "target": "web",
               "cases": [_generation(soma, p, {}) for p in GREEDY] + [_generation(soma, p, o) for p, o in SAMPLED + OTHER]},
              {"path": str(gpt2_web), "target": "web",
               "cases": [_generation(gpt2, p, {"max_new_tokens": 16}) for p in GREEDY[:6]]
               + [_generation(gpt2, p, {**o, "max_new_tokens": 16}) for p, o in SAMPLED[:3]]}]
    plain = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(plain, d / "plain.onnx")
    (d / "random.onnx").write_bytes(np.random.default_rng(1).bytes(4096))
    meta = json.loads({p.key: p.value for p in onnx.load(str(SOMA)).metadata_props}["edgekit"])
    data = {"models": models,
            "tokenizers": [_tokenizer_case("soma-bpe", soma.tokenizer.spec),
                           _tokenizer_case("gpt2", bpe_spec(gpt2_ranks(), name="gpt2"))],
            "cards": [_card_case(p) for p in (SOMA, soma_web, gpt2_web)],
            "rng": [{"seed": s, "draws": np.random.default_rng(s).random(1000).tolist()}
                    for s in (0, 1, 42, 2**32 - 1, 2**32, 2**53 - 1, 2**40 + 3)],
            "refused": [{"case": c, "meta": mutate(meta), "message": m} for c, mutate, m in REFUSED],
            "bad_files": [{"path": str(d / "plain.onnx"), "message": "has no edgekit metadata"},
                          {"path": str(d / "random.onnx"), "message": "random.onnx"}]}
    path = d / "cases.json"
    path.write_text(json.dumps(data))
    return path, data


def test_web_export_records_target_numerics_and_inline_ranks(soma_web, gpt2_web):
    soma, gpt2 = load(soma_web, threads=1), load(gpt2_web, threads=1)
    assert soma.card.deploy.target == gpt2.card.deploy.target == "web"
    assert soma.card.quantization.scheme == "int8-weights" and "wasm" in soma.card.deploy.numerics
    assert dict(soma.card.deploy.session_config) == {"session.disable_quant_qdq": "1"}
    assert soma.card.verification["decode_timed_in"].startswith("onnxruntime-web")
    assert gpt2.card.tokenizer["kind"] == "bpe" and gpt2.card.tokenizer["name"] == "gpt2"  # not "gpt2": a page builds it
    text = "def get_value(self):\n    return 'h\u00e9llo' \U0001f600"
    assert gpt2.tokenizer.encode(text) == from_spec({"kind": "gpt2"}).encode(text)
    assert os.path.getsize(soma_web) < os.path.getsize(SOMA) * 1.1  # int8-sized


def test_node_runtime_gives_pythons_tokens(cases):
    """node --test web/test/: tokenizer, ModelCard reader, runtime in onnxruntime-node and wasm."""
    path, _ = cases
    r = subprocess.run(["node", "--test", "test/"], cwd=WEB, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "EDGEKIT_WEB_CASES": str(path)})
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout and "# skipped 0" in r.stdout


def test_site_in_chromium_gives_pythons_tokens(soma_web, cases, tmp_path):
    """`edgekit web` then the page, from a 127.0.0.1 server, in headless Chromium: Python's greedy tokens on 20
    prompts and Python's seeded sampled tokens (the URL's prompt, max_new_tokens, temperature, top_k, ...)."""
    site = tmp_path / "site"
    r = run_cli("web", soma_web, "-o", site, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert {"index.html", "model.onnx", "edgekit/edgekit.js", "ort/ort-wasm-simd-threaded.wasm"} <= set(summary["files"])
    expected = [c for c in cases[1]["models"][0]["cases"] if not {"stop", "heal", "window"} & set(c["options"])]
    assert len(expected) >= 20 + 8
    with static_server(site) as base:
        got = run_pages(base, expected)
    bad = [(c["prompt"][:20], c["options"], g) for c, g in zip(expected, got)
           if g.get("token_ids") != c["token_ids"] or g.get("text") != c["text"]]
    assert not bad, f"{len(bad)} of {len(expected)} differ: {bad[:3]}"
    assert all(g["tokens_per_s"] > 0 and "page_errors" not in g for g in got)


def test_web_refuses_files_not_exported_for_the_web(tmp_path):
    r = run_cli("web", SOMA, "-o", tmp_path / "site")
    assert r.exit_code == 1
    assert r.stderr.strip().startswith("edgekit: error:") and "exported for target 'cpu'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "site").exists()


def test_web_refuses_an_existing_folder_and_leaves_it_alone(soma_web, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "mine.txt").write_text("keep")
    r = run_cli("web", soma_web, "-o", tmp_path / "site")
    assert r.exit_code == 1 and "is not an empty folder" in r.stderr
    assert [p.name for p in (tmp_path / "site").iterdir()] == ["mine.txt"]


def test_target_web_refuses_what_it_cannot_honour(tmp_path):
    ckpt = ROOT / "examples" / "reference" / "soma-stdlib.pt"
    r = run_cli("export", ckpt, "--target", "web", "--quant", "int8-static", "-o", tmp_path / "x.onnx")
    assert r.exit_code == 1 and "--quant int8-static is not offered with --target web" in r.stderr
    nano = ROOT / "examples" / "reference" / "nano-cnn-wordfreq.pt"
    r = run_cli("export", nano, "--target", "web", "-o", tmp_path / "y.onnx")
    assert r.exit_code == 1 and "--target web does not apply to bytecnn models" in r.stderr
    assert not list(tmp_path.iterdir())
