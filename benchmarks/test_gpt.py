"""GPT gates: decode speed against PyTorch eager (same run), threads, first token, size, memory."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import pytest
import torch

from edgekit.export.gpt import prepare_model
from edgekit.models.gpt import generate_cached
from edgekit.runtime import load
from edgekit.runtime.gpt import SamplingOptions
from edgekit.train.checkpoint import load_checkpoint

PROMPT = "def get_value(self, key):\n    return"
NEW_TOKENS = 48
ROUNDS = 7


@pytest.fixture(scope="module")
def pair(gpt_artifacts):
    model, _ = prepare_model(load_checkpoint(gpt_artifacts["ckpt"]))
    lm1 = load(gpt_artifacts["onnx"], threads=1)
    ids = lm1.tokenizer.encode(PROMPT)[:8]
    assert len(ids) == 8
    return model, lm1, ids, gpt_artifacts


def _side_by_side(model, lm, ids, threads: int, rounds: int = ROUNDS):
    """Greedy 8-token prompt + 48 new tokens; edgekit and PyTorch eager timed alternately."""
    torch.set_num_threads(threads)
    opts = SamplingOptions(max_new_tokens=NEW_TOKENS, heal=False)
    lm._run([ids], opts), generate_cached(model, ids, NEW_TOKENS)  # warm-up
    ours, theirs = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        g = lm._run([ids], opts)[0]
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = generate_cached(model, ids, NEW_TOKENS)
        theirs.append(time.perf_counter() - t0)
    return g, ref, NEW_TOKENS / statistics.median(ours), NEW_TOKENS / statistics.median(theirs)


@pytest.mark.gate
def test_gpt_decode_speedup_vs_pytorch_eager(benchmark, gate, pair):
    model, lm, ids, art = pair
    benchmark.group = "gpt"
    g, ref, ours, theirs = _side_by_side(model, lm, ids, threads=1)
    benchmark.pedantic(lambda: lm._run([ids], SamplingOptions(max_new_tokens=NEW_TOKENS, heal=False)), rounds=ROUNDS, iterations=1)
    meta = lm.meta
    benchmark.extra_info.update({"scheme": meta["quantization"]["scheme"], "threads": 1,
                                 "model_bytes": art["onnx"].stat().st_size, "edgekit_tokens_per_s": ours,
                                 "pytorch_eager_tokens_per_s": theirs})
    # a fast wrong answer is no benchmark: the export's own verification and this run's tokens
    assert len(g.token_ids) == NEW_TOKENS and len(ref) == NEW_TOKENS
    if meta["quantization"]["scheme"] != "fp32":
        assert meta["verification"]["final"]["greedy_agreement"] >= 0.95
    agree = sum(a == b for a, b in zip(g.token_ids, ref)) / NEW_TOKENS
    benchmark.extra_info["greedy_agreement_free_running"] = agree
    gate("gpt.decode_speedup_vs_torch", ours / theirs)


def test_gpt_two_threads_faster_than_one(benchmark, gate, pair):
    model, lm1, ids, art = pair
    benchmark.group = "gpt"
    lm2 = load(art["onnx"], threads=2)
    opts = SamplingOptions(max_new_tokens=NEW_TOKENS, heal=False)
    one, two = [], []
    lm1._run([ids], opts), lm2._run([ids], opts)
    for _ in range(ROUNDS):
        one.append(lm1._run([ids], opts)[0].tokens_per_s)
        two.append(lm2._run([ids], opts)[0].tokens_per_s)
    benchmark.pedantic(lambda: lm2._run([ids], opts), rounds=ROUNDS, iterations=1)
    g1, _, ours2, theirs2 = _side_by_side(model, lm2, ids, threads=2)
    torch.set_num_threads(1)
    benchmark.extra_info.update({"threads": 2, "scheme": lm2.meta["quantization"]["scheme"],
                                 "model_bytes": art["onnx"].stat().st_size,
                                 "tokens_per_s_1_thread": statistics.median(one),
                                 "tokens_per_s_2_threads": statistics.median(two),
                                 "speedup_vs_torch_2_threads": ours2 / theirs2})
    gate("gpt.threads2_vs_threads1", statistics.median(two) / statistics.median(one))


def test_gpt_time_to_first_token_vs_pytorch(benchmark, gate, pair):
    model, lm, ids, art = pair
    benchmark.group = "gpt"
    torch.set_num_threads(1)
    opts = SamplingOptions(max_new_tokens=1, heal=False)
    theirs = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        generate_cached(model, ids, 1)
        theirs.append((time.perf_counter() - t0) * 1e3)
    g = benchmark.pedantic(lambda: lm._run([ids], opts)[0], rounds=ROUNDS * 3, iterations=1)
    ours = benchmark.stats.stats.median * 1e3
    benchmark.extra_info.update({"threads": 1, "scheme": lm.meta["quantization"]["scheme"],
                                 "ttft_ms": ours, "pytorch_ttft_ms": statistics.median(theirs),
                                 "model_bytes": art["onnx"].stat().st_size})
    assert len(g.token_ids) == 1
    gate("gpt.ttft_speedup_vs_torch", statistics.median(theirs) / ours)


@pytest.mark.gate
def test_gpt_every_quantization_scheme_within_budget(benchmark, gate, pair):
    """The export tried every scheme on this checkpoint; each one's figures are in the file."""
    _, lm, _, art = pair
    benchmark.group = "gpt"
    steps = {s["step"]: s for s in lm.meta["verification"]["steps"]}
    schemes = {k.split(":", 1)[1]: v for k, v in steps.items() if k.startswith("quantize:")}
    benchmark(lambda: len(schemes))
    benchmark.extra_info.update({k: {"val_loss_delta_pct": v["parity"]["val_loss_delta_pct"],
                                     "greedy_agreement": v["parity"]["greedy_agreement"], "bytes": v["bytes"]}
                                 for k, v in schemes.items()})
    assert set(schemes) == {"int4", "int8-dynamic", "int8-nbits", "int8-static"}
    gate("gpt.worst_scheme_val_loss_delta_pct", max(v["parity"]["val_loss_delta_pct"] for v in schemes.values()))
    gate("gpt.worst_scheme_greedy_agreement", min(v["parity"]["greedy_agreement"] for v in schemes.values()))


@pytest.mark.gate
def test_gpt_default_export_size(benchmark, gate, pair):
    _, lm, _, art = pair
    benchmark.group = "gpt"
    size = benchmark(lambda: art["onnx"].stat().st_size)
    benchmark.extra_info.update({"scheme": lm.meta["quantization"]["scheme"], "threads": 1, "model_bytes": size})
    gate("gpt.phase3_file_bytes", size)


@pytest.mark.gate
def test_gpt_load_import_and_peak_memory(benchmark, gate, pair):
    """A fresh process: import time, load time and peak resident memory while generating."""
    _, lm, _, art = pair
    benchmark.group = "gpt"
    code = (
        "import time, json\n"
        "t0 = time.perf_counter()\n"
        "import edgekit.runtime\n"
        "t1 = time.perf_counter()\n"
        f"lm = edgekit.runtime.load({str(art['onnx'])!r}, threads=1)\n"
        "t2 = time.perf_counter()\n"
        "g = lm.generate('def get_', max_new_tokens=48)\n"
        "from edgekit.runtime.bench import peak_rss_mb\n"
        "print(json.dumps({'import_s': t1 - t0, 'load_s': t2 - t1, 'tokens': len(g.token_ids),\n"
        "                  'peak_rss_mb': peak_rss_mb()}))\n"
    )

    def fresh():
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return json.loads(r.stdout)

    res = benchmark.pedantic(fresh, rounds=3, iterations=1)
    benchmark.extra_info.update({"scheme": lm.meta["quantization"]["scheme"], "threads": 1,
                                 "model_bytes": art["onnx"].stat().st_size, **res})
    assert res["tokens"] == 48
    gate("gpt.peak_rss_mb", res["peak_rss_mb"])
    gate("gpt.import_runtime_s", res["import_s"])


@pytest.mark.gate
def test_gpt_sampled_decode_as_fast_as_greedy(benchmark, gate, pair):
    """Sampling (T 0.8, top-k 40) runs in the file's Loop like greedy: both timed alternately, same run."""
    _, lm, ids, art = pair
    benchmark.group = "gpt"
    greedy = SamplingOptions(max_new_tokens=NEW_TOKENS, heal=False)
    sampled = SamplingOptions(max_new_tokens=NEW_TOKENS, heal=False, temperature=0.8, top_k=40, seed=1)
    lm._run([ids], greedy), lm._run([ids], sampled)
    g, s = [], []
    for _ in range(ROUNDS):
        g.append(lm._run([ids], greedy)[0].tokens_per_s)
        s.append(lm._run([ids], sampled)[0].tokens_per_s)
    benchmark.pedantic(lambda: lm._run([ids], sampled), rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update({"scheme": lm.meta["quantization"]["scheme"], "threads": 1,
                                 "greedy_tokens_per_s": statistics.median(g),
                                 "sampled_tokens_per_s": statistics.median(s)})
    assert lm._sampler_graph, "the export carries the in-graph sampler"
    gate("gpt.sampled_vs_greedy_decode", statistics.median(s) / statistics.median(g))


@pytest.mark.gate
def test_gpt_bytes_per_parameter(benchmark, gate, pair):
    """The default file's bytes per model parameter (the tied embedding counted once)."""
    model, lm, _, art = pair
    benchmark.group = "gpt"
    params = sum(p.numel() for p in model.parameters())  # tied wte/lm_head counted once by nn.Module
    size = benchmark(lambda: art["onnx"].stat().st_size)
    benchmark.extra_info.update({"scheme": lm.meta["quantization"]["scheme"], "params": params, "model_bytes": size})
    gate("gpt.bytes_per_param", size / params)
