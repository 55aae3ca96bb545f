"""Export: parity at every step, symbolic axes, nanoGPT and character-level checkpoints, safety."""
import json
import pickle
from pathlib import Path

import onnx
import pytest
import torch

from conftest import Payload, run_cli
from edgekit.models.gpt import GPT, GPTConfig


def _meta(path):
    m = onnx.load(str(path))
    return json.loads({p.key: p.value for p in m.metadata_props}["edgekit"]), m


def test_fp32_export_parity_and_self_description(tiny_gpt):
    meta, m = _meta(tiny_gpt["fp32"])
    steps = {s["step"]: s for s in meta["verification"]["steps"]}
    assert steps["export"]["parity"]["max_abs_diff"] <= 1e-4
    assert steps["simplify"]["parity"]["max_abs_diff"] <= 1e-4
    assert meta["family"] == "gpt" and meta["tokenizer"] == {"kind": "gpt2"} and meta["block_size"] == 16
    assert meta["quantization"]["scheme"] == "fp32" and len(meta["source_sha256"]) == 64
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in m.graph.initializer)


def test_dynamic_axes_stay_symbolic_after_simplify(tiny_gpt):
    _, m = _meta(tiny_gpt["fp32"])
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in list(m.graph.input) + list(m.graph.output)}
    assert dims["input_ids"] == ["batch", "sequence"]
    assert dims["past.0.key"] == ["batch", 2, "past_sequence", 16]
    assert dims["attention_mask"] == ["batch", "total_sequence"]
    # the written file wraps the step in the generation Loop: logits per pass, greedy tokens per pass
    assert dims["logits"] == ["steps_run", "batch", "logits_width"]
    assert dims["present.0.key"][0] == "batch" and isinstance(dims["present.0.key"][2], str)
    assert dims["steps"] == [] and dims["tokens"] == ["steps_run", "batch"]


def test_quantized_default_passes_its_budget(tiny_soma):
    report = json.loads(tiny_soma["report"])
    assert report["scheme"] != ""
    meta, _ = _meta(tiny_soma["onnx"])
    assert meta["tokenizer"]["kind"] == "bpe"  # the vocabulary travels inside the model file
    if report["scheme"] != "fp32":
        final = meta["verification"]["final"]
        assert final["val_loss_delta_pct"] <= 1.0 and final["greedy_agreement"] >= 0.95



def test_int8_stores_the_tied_matrix_once_within_1_1_bytes_per_parameter(tmp_path):
    """On the shipped trained soma, int8-nbits keeps one 8-bit copy of the tied embedding/head: the head's
    MatMulNBits and the token lookup's GatherBlockQuantized read the same initializer and scales, no
    other tensor is that big, and the file (metadata included) is <= 1.1 bytes per parameter, the
    tied matrix counted once, within the quality budget (issue 14)."""
    import numpy as np

    from edgekit.export.gpt import prepare_model
    from edgekit.train.checkpoint import load_checkpoint

    ckpt = Path(__file__).resolve().parent.parent / "examples" / "reference" / "soma-stdlib.pt"
    out = tmp_path / "soma.onnx"
    r = run_cli("export", ckpt, "-o", out, "--quant", "int8-nbits", "--threads", 1, "--quiet")
    assert r.exit_code == 0, r.output
    model, cfg = prepare_model(load_checkpoint(ckpt))
    params = sum(p.numel() for p in model.parameters())  # nn.Module counts the tied wte/lm_head once
    V, C = cfg["vocab_size"], cfg["n_embd"]
    meta, m = _meta(out)
    inits = {i.name: i for i in m.graph.initializer}
    body = next(onnx.helper.get_attribute_value(a) for n in m.graph.node if n.op_type == "Loop" for a in n.attribute
                if a.name == "body")
    nodes = list(m.graph.node) + list(body.node)
    producer = {o: n for n in nodes for o in n.output}

    def source(x):  # through the Reshapes (and the Loop body's prefix) to the tensor itself
        while x in producer and producer[x].op_type in ("Reshape", "Expand"):
            x = producer[x].input[0]
        return x

    head = [n for n in nodes if n.op_type == "MatMulNBits"
            and {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}["N"] == V]
    lookup = [n for n in nodes if n.op_type == "GatherBlockQuantized" and n.input[1].endswith("input_ids")]
    assert len(head) == 1 and len(lookup) == 1
    assert source(lookup[0].input[0]) == head[0].input[1] in inits  # a Reshape of the head's bytes
    assert source(lookup[0].input[2]) == source(head[0].input[2])  # and the same scales
    assert [n for n, i in inits.items() if np.prod(i.dims) >= V * C] == [head[0].input[1]]
    assert out.stat().st_size / params <= 1.1, (out.stat().st_size, params)
    final = meta["verification"]["final"]
    assert final["val_loss_delta_pct"] <= 1.0 and final["greedy_agreement"] >= 0.95


def _nanogpt_ckpt(path, *, bias: bool, prefix: bool, vocab: int = 50304, seed: int = 0):
    """A checkpoint exactly as karpathy/nanoGPT's train.py writes it."""
    torch.manual_seed(seed)
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=bias, vocab_size=vocab, dropout=0.0)
    model = GPT(GPTConfig(**args))
    sd = model.state_dict()
    if prefix:
        sd = {f"_orig_mod.{k}": v for k, v in sd.items()}
    opt = torch.optim.AdamW(model.parameters())
    torch.save({"model": sd, "optimizer": opt.state_dict(), "model_args": args, "iter_num": 5000,
                "best_val_loss": torch.tensor(3.1), "config": {"dataset": "openwebtext", "batch_size": 12}}, path)
    return model


@pytest.mark.parametrize("bias,prefix", [(True, False), (False, True)])
def test_nanogpt_checkpoint_generates_same_greedy_tokens(tmp_path, bias, prefix):
    from edgekit.runtime import load

    model = _nanogpt_ckpt(tmp_path / "ckpt.pt", bias=bias, prefix=prefix).eval()
    out = tmp_path / "nano.onnx"
    r = run_cli("export", tmp_path / "ckpt.pt", "-o", out, "--quant", "fp32", "--quiet")
    assert r.exit_code == 0, r.output
    lm = load(out, threads=1)
    g = lm.generate("def get_", max_new_tokens=20, heal=False)  # the same prompt ids as PyTorch
    ids = torch.tensor([g.prompt_ids])
    with torch.no_grad():
        for _ in range(20):
            logits = model(ids)[0][:, -1, :50257]  # edgekit trims the padded 50,304 head to GPT-2's 50,257
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert g.token_ids == ids[0, len(g.prompt_ids):].tolist()


def test_character_level_checkpoint_with_meta_pkl_roundtrips_text(tmp_path):
    from edgekit.runtime import load

    chars = sorted(set("First Citizen:\nBefore we proceed any further, hear me speak.\n"))
    pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}},
                open(tmp_path / "meta.pkl", "wb"))
    _nanogpt_ckpt(tmp_path / "ckpt.pt", bias=False, prefix=False, vocab=len(chars))
    data = tmp_path / "input.txt"
    data.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40)
    r = run_cli("export", tmp_path / "ckpt.pt", "--meta", tmp_path / "meta.pkl", "--data", data, "--quant", "fp32",
                "-o", tmp_path / "char.onnx", "--quiet")
    assert r.exit_code == 0, r.output
    lm = load(tmp_path / "char.onnx")
    assert lm.tokenizer.decode(lm.tokenizer.encode("hear me")) == "hear me"
    g = lm.generate("First", max_new_tokens=10)
    assert len(g.token_ids) == 10 and set(g.text) <= set(chars)



def test_malicious_checkpoint_never_runs_its_payload(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "model_args": {}, "evil": Payload(str(marker))}, tmp_path / "evil.pt")
    r = run_cli("export", tmp_path / "evil.pt", "-o", tmp_path / "x.onnx")
    assert r.exit_code == 1
    assert r.stderr.startswith("edgekit: error: refusing to load") and r.stderr.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()


def test_malicious_meta_pkl_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    _nanogpt_ckpt(tmp_path / "ckpt.pt", bias=False, prefix=False, vocab=10)
    pickle.dump(Payload(str(marker)), open(tmp_path / "meta.pkl", "wb"))
    r = run_cli("export", tmp_path / "ckpt.pt", "--meta", tmp_path / "meta.pkl", "-o", tmp_path / "x.onnx")
    assert r.exit_code == 1 and "refusing" in r.stderr and not marker.exists()


def test_export_refuses_to_overwrite_its_input(tiny_gpt):
    before = tiny_gpt["ckpt"].read_bytes()
    r = run_cli("export", tiny_gpt["ckpt"], "-o", tiny_gpt["ckpt"])
    assert r.exit_code == 1 and "is the input file" in r.stderr
    assert tiny_gpt["ckpt"].read_bytes() == before


def test_inspect_shows_metadata_ops_and_sizes(tiny_gpt):
    r = run_cli("inspect", tiny_gpt["fp32"], "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["metadata"]["family"] == "gpt"
    assert info["operators"]["MatMul"] >= 1
    sizes = info["size_breakdown"]
    assert sizes["token_embedding"] > sizes["transformer"] > 0
    assert "token_embedding" in run_cli("inspect", tiny_gpt["fp32"]).stdout


# ----- every export budget, forced to break: exit 1, one error line, nothing written -------------------
import pytest as _pytest  # noqa: E402


@_pytest.mark.parametrize("module, budget, value, quant, says", [
    ("pipeline", "FP32_TOL", 0.0, "fp32", "max |logit diff|"),                 # the fp32 graph must match PyTorch
    ("gpt_verify", "GREEDY_AGREEMENT", 1.01, "int8-dynamic", "greedy agreement"),  # quantized: greedy agreement
    ("gpt_verify", "VAL_LOSS_DELTA_PCT", -100.0, "int8-nbits", "val loss"),        # quantized: held-out loss delta
])
def test_export_budget_break_exits_1_with_one_line_and_writes_nothing(tmp_path, tiny_soma, monkeypatch, module, budget,
                                                                       value, quant, says):
    import importlib

    from conftest import run_cli

    monkeypatch.setattr(importlib.import_module(f"edgekit.export.{module}"), budget, value)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = run_cli("export", tiny_soma["ckpt"], "-o", out_dir / "m.onnx", "--quant", quant, "--quiet")
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: verification failed") and says in lines[0], lines
    assert list(out_dir.iterdir()) == []
