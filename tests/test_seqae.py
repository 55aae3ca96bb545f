"""seqae end to end: presets, model, tiny training on real token vectors, export parity, runtime, infer."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgekit.errors import UsageError
from edgekit.models import seqae
from edgekit.train import vectors

from conftest import run_cli

EXACT_PARAMS = {"ae-baseline": 61_136, "ae-scaled": 945_040, "ae-attention": 4_190_096}


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory):
    """ae-baseline (tanh RNN) and a narrow ae-attention (LSTM + attention), trained briefly and exported fp32."""
    out = tmp_path_factory.mktemp("seqae")
    runs = {}
    for preset, extra in (("ae-baseline", []), ("ae-attention", ["--set", "hidden=32", "--set", "attn_heads=4"])):
        r = run_cli("train", preset, "--out", out, "--tokens", 200, "--max-iters", 30, "--eval-interval", 10,
                    "--quiet", "--json", *extra)
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout)
        onnx_path = out / f"{preset}.onnx"
        r = run_cli("export", out / f"{preset}.pt", "-o", onnx_path, "--quant", "fp32", "--quiet", "--json")
        assert r.exit_code == 0, r.output
        runs[preset] = {"summary": summary, "onnx": onnx_path, "report": json.loads(r.stdout),
                        "ckpt": out / f"{preset}.pt"}
    return runs


def test_presets_exact_counts_and_notes():
    for name, p in seqae.PRESETS.items():
        assert p.name == name and p.family == "seqae" and p.note.startswith("notes 001")
        assert seqae.num_params(p) == EXACT_PARAMS[name]
    r = run_cli("presets", "--json")
    assert r.exit_code == 0, r.output
    listed = {row["preset"]: row for row in json.loads(r.stdout)}
    assert {k: listed[k]["params"] for k in EXACT_PARAMS} == EXACT_PARAMS
    assert listed["ae-attention"]["family"] == "seqae"


def test_padding_does_not_change_code_or_reconstruction():
    torch.manual_seed(0)
    model = seqae.build({"hidden": 16, "cell": "gru", "attn_heads": 2}).eval()
    x = torch.randn(1, 5, 384)
    padded = torch.cat([x, torch.zeros(1, 3, 384)], dim=1)
    with torch.no_grad():
        r1, c1 = model(x, torch.tensor([5]))
        r2, c2 = model(padded, torch.tensor([5]))
        zeroed = model.reconstruct(x, torch.tensor([5]), ablate="code")
    torch.testing.assert_close(c1, c2)
    torch.testing.assert_close(r1, r2[:, :5])
    assert not torch.allclose(zeroed, r1)


def test_training_writes_checkpoint_log_curves_and_figures(tiny_ae):
    s = tiny_ae["ae-baseline"]["summary"]
    out = tiny_ae["ae-baseline"]["ckpt"].parent
    assert (out / "train_log.json").is_file() and (out / "ae-baseline_curves.png").is_file()
    m = s["metrics"]
    assert s["params"] == EXACT_PARAMS["ae-baseline"]
    assert -1 <= m["test"]["token_cosine"] <= 1 and -1 <= m["test"]["sequence_cosine"] <= 1
    assert "test_code_zeroed" in m and "mean_vector_token_cosine" in m
    assert "test_attention_off" in tiny_ae["ae-attention"]["summary"]["metrics"]


@pytest.mark.parametrize("preset,exporter", [("ae-baseline", "torchscript"), ("ae-attention", "dynamo")])
def test_export_parity_fp32(tiny_ae, preset, exporter):
    report = tiny_ae[preset]["report"]
    assert report["scheme"] == "fp32" and report["extra"]["exporter"] == exporter
    for step in report["steps"]:
        assert step["ok"] and step["parity"]["max_abs_diff"] <= 1e-4, step


@pytest.mark.parametrize("preset", ["ae-baseline", "ae-attention"])
def test_runtime_matches_torch_and_handles_batches(tiny_ae, preset):
    from edgekit.runtime import load
    from edgekit.train.checkpoint import load_checkpoint

    ae = load(tiny_ae[preset]["onnx"], threads=1)
    assert ae.family == "seqae" and ae.card.family == "seqae"
    model = load_checkpoint(tiny_ae[preset]["ckpt"]).build_model()
    a = vectors.token_table()[vectors.token_ids("Return a new list of the sorted items.")]
    b = vectors.token_table()[vectors.token_ids("Close the file.")]
    code = ae.encode(a)
    assert code.shape == (16,)
    with torch.no_grad():
        ref_recon, ref_code = model(torch.from_numpy(a[None]), torch.tensor([len(a)]))
    np.testing.assert_allclose(code, ref_code[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(ae.reconstruct(a), ref_recon[0].numpy(), atol=1e-4)
    codes = ae.encode([a, b])
    assert codes.shape == (2, 16)
    np.testing.assert_allclose(codes[0], code, atol=1e-5)
    np.testing.assert_allclose(codes[1], ae.encode(b), atol=1e-5)
    recon = ae.reconstruct([a, b])
    assert [r.shape for r in recon] == [a.shape, b.shape]
    with pytest.raises(UsageError, match="384 values on the last axis"):
        ae.encode(np.zeros((3, 300), np.float32))
    with pytest.raises(UsageError, match="lengths must give"):
        ae.encode(np.zeros((2, 4, 384), np.float32), lengths=[4, 9])


def test_infer_cli_npy_and_errors(tiny_ae, tmp_path):
    onnx_path = tiny_ae["ae-baseline"]["onnx"]
    x, _ = vectors.token_batch([vectors.token_ids("Return the sum of the values."),
                                vectors.token_ids("Open it.")])
    np.save(tmp_path / "x.npy", x)
    r = run_cli("infer", onnx_path, tmp_path / "x.npy", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["shape"] == [2, x.shape[1], 384] and len(out["code"]) == 2 and len(out["code"][0]) == 16
    assert len(out["token_cosine"]) == 2
    r = run_cli("infer", onnx_path, tmp_path / "x.npy")
    assert r.exit_code == 0 and "code" in r.stdout and "token cosine" in r.stdout
    r = run_cli("infer", onnx_path, "Return the sum.")
    assert r.exit_code == 1
    assert r.stderr.strip() == ("edgekit: error: 'Return the sum.' is not a .npy file; this model file carries no "
                                'vocabulary; make a .npy of MiniLM token vectors with `python -m edgekit.train.vectors '
                                'tokens "TEXT" -o x.npy` (needs edgekit[all]) and pass that')
    r = run_cli("infer", onnx_path, tmp_path / "x.npy", "--max-new-tokens", 5)
    assert r.exit_code == 1
    assert r.stderr.strip() == ("edgekit: error: --max-new-tokens applies to GPT models only; "
                                "seqae models take vectors (.npy)")


def test_unknown_set_key_is_a_clear_error(tmp_path):
    r = run_cli("train", "ae-baseline", "--out", tmp_path, "--set", "colour=red", "--quiet")
    assert r.exit_code == 1
    assert r.stderr.startswith("edgekit: error: --set colour: not a seqae setting; known: max_iters, batch_size")


def test_runtime_modules_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
            "import edgekit.runtime.seqae, edgekit.runtime.amn, edgekit.runtime.vectors")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_serve_answers_embeddings_with_the_codes(tiny_ae):
    """`edgekit serve` on a seqae file: /v1/embeddings = the runtime's codes, one per sequence."""
    from edgekit.runtime import load

    from serving import Server

    path = tiny_ae["ae-baseline"]["onnx"]
    ae = load(path, threads=1)
    seqs = [np.random.default_rng(i).standard_normal((5 + i, ae.dim)).round(4) for i in range(2)]
    with Server(path) as s:
        r = s.openai().embeddings.create(model="ae", input=[x.tolist() for x in seqs])  # the openai client's call
        got = np.array([d.embedding for d in r.data])
        np.testing.assert_allclose(got, ae.encode([x.astype(np.float32) for x in seqs]), atol=1e-5)
        assert s.http.post("/v1/embeddings", json={"input": "text"}).status_code == 400
