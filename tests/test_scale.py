"""The export path for models of any size (issue 21): weights on disk, external data over 2 GB, the tied
matrix stored once at 4 bits, a memory-mapped checkpoint, and a clear error before long work.

The >2 GB path is forced on a small model by lowering the protobuf limit edgekit plans with
(``export.weights.PROTO_LIMIT``), then the file is used the way a user would: infer, inspect, bench.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from edgekit.models.gpt import GPT, GPTConfig
from conftest import run_cli


def _nanogpt_ckpt(path, *, n_embd=64, n_layer=2, n_head=2, vocab=50304, block=64, seed=0, optimizer=True):
    """A checkpoint as nanoGPT's train.py writes it: model, AdamW state, model_args, iter_num, config."""
    torch.manual_seed(seed)
    args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block, bias=True, vocab_size=vocab, dropout=0.0)
    model = GPT(GPTConfig(**args))
    obj = {"model": model.state_dict(), "model_args": args, "iter_num": 0, "best_val_loss": 9.9,
           "config": {"dataset": "none"}}
    if optimizer:  # AdamW's state is twice the weights: loading must never read it
        opt = torch.optim.AdamW(model.parameters(), lr=0.0)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        obj["optimizer"] = opt.state_dict()
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    return _nanogpt_ckpt(tmp_path_factory.mktemp("scale") / "ckpt.pt")


def test_over_2gb_path_writes_external_data_that_every_command_reads(small_ckpt, tmp_path, monkeypatch):
    """With the limit lowered below this model's size, fp32 goes to <file>.onnx + <file>.onnx.data: the
    report says so, and infer, inspect and bench (a fresh process) all read it; quantized stays one file."""
    from edgekit.export import weights

    monkeypatch.setattr(weights, "PROTO_LIMIT", 8_000_000)  # this model: fp32 ~14 MB, int8 ~3.5 MB
    out = tmp_path / "big.onnx"
    r = run_cli("export", small_ckpt, "-o", out, "--quant", "fp32", "--threads", 1)
    assert r.exit_code == 0, r.output
    assert "external data" in r.stderr and out.with_name("big.onnx.data").is_file()
    m = onnx.load(out, load_external_data=False)
    ext = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert ext and {e.value for t in ext for e in t.external_data if e.key == "location"} == {"big.onnx.data"}
    assert out.stat().st_size < 1_000_000  # the graph and small tensors; the 13 MB of weights are beside it
    offsets = [int(e.value) for t in ext for e in t.external_data if e.key == "offset"]
    assert all(o % weights.ALIGN == 0 for o in offsets)  # page-aligned: onnxruntime maps them
    r = run_cli("infer", out, "def f", "--max-new-tokens", 5, "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["token_ids"]) == 5
    r = run_cli("inspect", out, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["external_data"]["big.onnx.data"] == out.with_name("big.onnx.data").stat().st_size
    r = subprocess.run([sys.executable, "-m", "edgekit.cli", "bench", str(out), "--json"], capture_output=True, text=True)
    assert r.returncode in (0, 3), r.stderr  # 3: a budget broke (this is a random toy); the file ran
    assert json.loads(r.stdout)["rows"]
    # the same checkpoint quantized fits the (lowered) limit: one self-contained file, no stale .data left
    r = run_cli("export", small_ckpt, "-o", out, "--quant", "int8", "--threads", 1, "--quiet")
    assert r.exit_code == 0, r.output
    assert not out.with_name("big.onnx.data").exists()
    assert not [t for t in onnx.load(out).graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]


def test_int4_stores_the_tied_matrix_once_and_the_lookup_reads_the_heads_bytes(small_ckpt, tmp_path):
    """All-4-bit: one 4-bit tensor (with its scales and zero points) read by the head's MatMulNBits and by
    the token lookup's GatherBlockQuantized; the lookup returns exactly the head's dequantized rows."""
    from onnx import TensorProto as TP
    from onnx import helper as h

    from edgekit.export import common
    from edgekit.export.gpt_graph import prepare_model, to_graph
    from edgekit.export.gpt_quant import Bits, Mix, build
    from edgekit.export.weights import WeightStore
    from edgekit.train.checkpoint import load_checkpoint

    model, cfg = prepare_model(load_checkpoint(small_ckpt))
    with WeightStore(tmp_path) as store:
        q, recipe = build(common.simplify(to_graph(model, store)), store, Mix(Bits(4, 32), Bits(4, 32)))
        q = store.inline(q)  # the candidate's tensors live in the work file; the written file holds them
    V, C = cfg["vocab_size"], cfg["n_embd"]
    assert recipe["tied_embedding"] == "stored once"
    inits = {t.name: t for t in q.graph.initializer}
    big = [n for n, t in inits.items() if np.prod(t.dims) * 2 >= V * C]  # 4 bits: (V, C/2) bytes or more
    head = next(n for n in q.graph.node if n.op_type == "MatMulNBits" and n.name.startswith("lm_head"))
    lookup = next(n for n in q.graph.node if n.op_type == "GatherBlockQuantized" and n.input[1] == "input_ids")
    producer = {o: n for n in q.graph.node for o in n.output}
    assert big == [head.input[1]] and producer[lookup.input[0]].input[0] == head.input[1]
    assert [producer[x].input[0] for x in lookup.input[2:]] == list(head.input[2:])  # same scales, zero points
    # the lookup of every id equals the head's weights as MatMulNBits computes with them (identity input)
    g = h.make_graph([producer[lookup.input[0]], *(producer[x] for x in lookup.input[2:]),
                      h.make_node("GatherBlockQuantized", list(lookup.input), ["rows"], domain="com.microsoft",
                                  **{a.name: h.get_attribute_value(a) for a in lookup.attribute}),
                      h.make_node("MatMulNBits", ["eye", *head.input[1:]], ["cols"], domain="com.microsoft",
                                  **{a.name: h.get_attribute_value(a) for a in head.attribute if a.name != "accuracy_level"})],
                     "tied", [h.make_tensor_value_info(lookup.input[1], TP.INT64, [V]),
                              h.make_tensor_value_info("eye", TP.FLOAT, [C, C])],
                     [h.make_tensor_value_info("rows", TP.FLOAT, [V, C]), h.make_tensor_value_info("cols", TP.FLOAT, [C, V])],
                     [inits[x] for x in {*head.input[1:], *(producer[y].input[1] for y in (lookup.input[0], *lookup.input[2:]))}])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 18), h.make_opsetid("com.microsoft", 1)], ir_version=10)
    rows, cols = common.session(m).run(None, {lookup.input[1]: np.arange(V, dtype=np.int64),
                                              "eye": np.eye(C, dtype=np.float32)})
    assert np.array_equal(rows, cols.T)
    assert np.abs(rows - model.transformer.wte.weight.detach().numpy()).max() < 0.05  # and it is the embedding


def test_checkpoint_is_memory_mapped_and_its_optimizer_state_never_read(tmp_path):
    """A checkpoint three times its weights (AdamW's state): loading it reads no more than the weights."""
    import resource

    path = _nanogpt_ckpt(tmp_path / "ckpt.pt", n_embd=256, n_layer=4, n_head=4)  # ~16M params, ~190 MB file
    code = ("import resource, sys; from edgekit.train.checkpoint import load_checkpoint;"
            "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            "c = load_checkpoint(sys.argv[1]);"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) * 1024)")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    grew, size = int(r.stdout), path.stat().st_size
    weights_bytes = size / 3  # model + two AdamW moments of the same size
    assert grew < 1.5 * weights_bytes, (grew, size)


def test_whole_model_scheme_over_2gb_is_refused_before_any_work(small_ckpt, tmp_path, monkeypatch):
    from edgekit.export import weights

    monkeypatch.setattr(weights, "PROTO_LIMIT", 1_000_000)
    out = tmp_path / "x.onnx"
    r = run_cli("export", small_ckpt, "-o", out, "--quant", "int8-dynamic")
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1].startswith("edgekit: error: --quant int8-dynamic quantizes the whole")
    assert "[edgekit] PyTorch reference" not in r.stderr  # refused before the probes (minutes at gpt2-xl)
    assert not out.exists()


def test_export_work_folder_is_removed_after_success_and_failure(small_ckpt, tmp_path, monkeypatch):
    from edgekit.export import gpt_verify

    out = tmp_path / "a.onnx"
    assert run_cli("export", small_ckpt, "-o", out, "--quant", "fp32", "--quiet").exit_code == 0
    monkeypatch.setattr(gpt_verify, "VAL_LOSS_DELTA_PCT", -100.0)  # no quantized graph can pass: int8 fails
    r = run_cli("export", small_ckpt, "-o", tmp_path / "b.onnx", "--quant", "int8", "--quiet")
    assert r.exit_code == 1 and "verification failed; nothing written" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"]
