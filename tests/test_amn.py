"""amn end to end: preset, model, tiny training on real MiniLM sentence vectors, export parity, runtime, infer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgekit.errors import UsageError
from edgekit.models import amn
from edgekit.train.amn import amn_loss

from conftest import run_cli


@pytest.fixture(scope="module")
def tiny_amn(tmp_path_factory):
    """The amn preset on 6 stdlib modules (+1 val, +1 test) and 6 pydoc topics, briefly, exported with --quant auto."""
    out = tmp_path_factory.mktemp("amn")
    r = run_cli("train", "amn", "--out", out, "--tokens", 6, "--max-iters", 40, "--eval-interval", 20,
                "--quiet", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    onnx_path = out / "amn.onnx"
    r = run_cli("export", out / "amn.pt", "-o", onnx_path, "--quiet", "--json")
    assert r.exit_code == 0, r.output
    return {"summary": summary, "ckpt": out / "amn.pt", "onnx": onnx_path, "report": json.loads(r.stdout)}


def test_preset_exact_count_and_note():
    p = amn.PRESETS["amn"]
    assert p.name == "amn" and p.family == "amn" and p.note.startswith("notes 003")
    assert p.model.ctx == 5 and p.train.infonce == 0.0
    assert amn.num_params(p) == 32_774
    r = run_cli("presets", "--json")
    assert {row["preset"]: row["params"] for row in json.loads(r.stdout)}["amn"] == 32_774


def test_untrained_model_predicts_the_context_mean():
    torch.manual_seed(0)
    model = amn.build({"d_model": 16, "n_head": 2}).eval()
    ctx = torch.randn(3, 5, 384)
    with torch.no_grad():
        torch.testing.assert_close(model(ctx), ctx.mean(1))


def test_infonce_is_an_option():
    pred, target = torch.randn(8, 384), torch.randn(8, 384)
    mse = amn_loss(pred, target, infonce=0.0, temperature=0.07)
    torch.testing.assert_close(mse, torch.nn.functional.mse_loss(pred, target))
    assert amn_loss(pred, target, infonce=0.1, temperature=0.07) > mse


def test_training_reports_model_next_to_both_baselines(tiny_amn):
    s = tiny_amn["summary"]
    assert s["data"]["source"] == "stdlib" and s["data"]["ood"] == "pydoc"
    assert all(s["data"]["windows"][k] > 0 for k in ("train", "val", "test", "ood"))
    for split in ("test", "ood"):
        m = s["metrics"][split]
        assert set(m) >= {"cosine", "repeat_last", "mean_context", "gain_vs_best_baseline"}
        assert m["gain_vs_best_baseline"] == pytest.approx(m["cosine"] - max(m["repeat_last"], m["mean_context"]))
    out = tiny_amn["ckpt"].parent
    assert (out / "train_log.json").is_file() and (out / "amn_curves.png").is_file()


def test_export_parity_and_quantization_record(tiny_amn):
    report = tiny_amn["report"]
    assert report["extra"]["exporter"] == "dynamo" and report["scheme"] in ("fp32", "int8")
    exact = [s for s in report["steps"] if not s["step"].startswith("quantize")]
    assert exact and all(s["ok"] and s["parity"]["max_abs_diff"] <= 1e-4 for s in exact)
    q = [s for s in report["steps"] if s["step"].startswith("quantize")][0]
    assert {"next_cosine", "drop", "budget", "p50_ms", "p50_ms_fp32"} <= set(q["parity"])


def test_runtime_predict_next_matches_torch(tiny_amn):
    from edgekit.runtime import load
    from edgekit.train.checkpoint import load_checkpoint

    m = load(tiny_amn["onnx"], threads=1)
    assert m.family == "amn" and m.card.family == "amn" and m.ctx == 5
    ck = load_checkpoint(tiny_amn["ckpt"])
    ctx = ck.extra["heldout_context"].numpy()
    nxt = m.predict_next(ctx[0])
    assert nxt.shape == (384,)
    batch = m.predict_next(np.concatenate([ctx, ctx])[:4])
    assert batch.shape == (4, 384)
    fp32 = m.card.quantization.scheme == "fp32"
    tol = 1e-4 if fp32 else 0.01  # a fifth of a typical |element| (~0.05)
    # dynamic int8 scales activations over the whole batch, so a batched row is only close to the single call
    np.testing.assert_allclose(batch[0], nxt, atol=1e-5 if fp32 else tol)
    with torch.no_grad():
        ref = ck.build_model()(torch.from_numpy(np.concatenate([ctx, ctx])[:4])).numpy()
    np.testing.assert_allclose(batch, ref, atol=tol)
    longer = np.concatenate([np.ones((2, 384), np.float32), ctx[0]])
    np.testing.assert_allclose(m.predict_next(longer), nxt, atol=1e-6)  # only the last 5 are read
    with pytest.raises(UsageError, match="at least 5 vectors"):
        m.predict_next(ctx[0, :3])


def test_infer_cli_npy_and_errors(tiny_amn, tmp_path):
    from edgekit.train.checkpoint import load_checkpoint

    ctx = load_checkpoint(tiny_amn["ckpt"]).extra["heldout_context"].numpy()
    np.save(tmp_path / "doc.npy", ctx[0])
    r = run_cli("infer", tiny_amn["onnx"], tmp_path / "doc.npy", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["next"]) == 1 and len(out["next"][0]) == 384
    r = run_cli("infer", tiny_amn["onnx"], tmp_path / "doc.npy")
    assert r.exit_code == 0 and "next vector (384-d" in r.stdout
    r = run_cli("infer", tiny_amn["onnx"], "The next sentence.")
    assert r.exit_code == 1
    assert r.stderr.strip() == (
        "edgekit: error: 'The next sentence.' is not a .npy file; amn models take sentence vectors, and the MiniLM "
        'encoder (90 MB) is not in the model file; make a .npy with `python -m edgekit.train.vectors sentences '
        '"TEXT" -o ctx.npy` (needs edgekit[all])')
    r = run_cli("infer", tiny_amn["onnx"], tmp_path / "doc.npy", "--top-k", 3, "--stop", "x")
    assert r.exit_code == 1
    assert r.stderr.strip() == ("edgekit: error: --top-k, --stop apply to GPT models only; "
                                "amn models take vectors (.npy)")
    np.save(tmp_path / "bad.npy", np.zeros((6, 300), np.float32))
    r = run_cli("infer", tiny_amn["onnx"], tmp_path / "bad.npy")
    assert r.exit_code == 1 and "384 values on the last axis" in r.stderr


def test_quant_scheme_that_does_not_apply(tiny_amn, tmp_path):
    r = run_cli("export", tiny_amn["ckpt"], "-o", tmp_path / "x.onnx", "--quant", "int4", "--quiet")
    assert r.exit_code == 1
    assert r.stderr.strip() == ("edgekit: error: --quant int4 does not apply to amn models; "
                                "choose one of auto, fp32, int8, int8-dynamic")


def test_serve_answers_embeddings_with_the_predicted_next_vector(tiny_amn):
    """`edgekit serve` on an amn file: /v1/embeddings (the family's route) = the runtime's predict_next; no completions."""
    from edgekit.runtime import load

    from serving import Server

    lm = load(tiny_amn["onnx"], threads=1)
    ctx = np.random.default_rng(0).standard_normal((2, lm.ctx + 1, lm.dim)).round(4)
    with Server(tiny_amn["onnx"]) as s:
        r = s.http.post("/v1/embeddings", json={"input": ctx.tolist(), "model": "amn"})
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]])
        np.testing.assert_allclose(got, np.stack([lm.predict_next(x) for x in ctx.astype(np.float32)]), atol=1e-5)
        assert r.json()["object"] == "list" and r.json()["model"] == "amn"
        assert s.http.post("/v1/completions", json={"prompt": "a"}).status_code == 404
        bad = s.http.post("/v1/embeddings", json={"input": [[1.0, 2.0]]})
        assert bad.status_code == 400 and "384" in bad.json()["error"]["message"]
        assert s.stop() == 0
