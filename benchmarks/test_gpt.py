"""GPT gates on a trained model: decode speed against PyTorch eager (same run), threads, first token,
every scheme's quality, size, memory. Each checks its answer (benchmarks/checks.py) beside its timing."""
from __future__ import annotations

import statistics
import time

import pytest
import torch

from checks import check_decode, check_same_tokens, check_schemes, check_top_k
from edgekit.export.gpt import prepare_model
from edgekit.models.gpt import generate_cached
from edgekit.runtime import load
from edgekit.runtime.bench import fp32_bytes, fresh_process
from edgekit.runtime.gpt import SamplingOptions, threads_ratio
from edgekit.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.gate
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


def agreement_floor(lm) -> float:
    """The export's own greedy-agreement budget for quantized files; fp32 must agree everywhere."""
    return 1.0 if lm.card.quantization.scheme == "fp32" else lm.card.verification["budgets"]["greedy_agreement"]


def decode_side_by_side(model, lm, ids, threads: int = 1, rounds: int = ROUNDS):
    """Greedy 8-token prompt + 48 new tokens; edgekit and PyTorch eager timed alternately. Checks the answer
    against PyTorch on the same checkpoint before returning (tokens, agreement, ours tok/s, theirs tok/s)."""
    torch.set_num_threads(threads)
    opts = SamplingOptions(max_new_tokens=NEW_TOKENS, heal=False)
    lm.run([ids], opts), generate_cached(model, ids, NEW_TOKENS)  # warm-up
    ours, theirs = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        g = lm.run([ids], opts)[0]
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        generate_cached(model, ids, NEW_TOKENS)
        theirs.append(time.perf_counter() - t0)
    agree = check_decode(model, ids, g.token_ids, expected=NEW_TOKENS, floor=agreement_floor(lm))
    return g.token_ids, agree, NEW_TOKENS / statistics.median(ours), NEW_TOKENS / statistics.median(theirs)


def first_token_side_by_side(model, lm, ids, rounds: int = ROUNDS * 3):
    """Time to first token, edgekit vs PyTorch eager prefill, alternated; the first token must be PyTorch's."""
    torch.set_num_threads(1)
    opts = SamplingOptions(max_new_tokens=1, heal=False)
    lm.run([ids], opts), generate_cached(model, ids, 1)
    ours, theirs = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        g = lm.run([ids], opts)[0]
        ours.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        generate_cached(model, ids, 1)
        theirs.append((time.perf_counter() - t0) * 1e3)
    check_decode(model, ids, g.token_ids, expected=1, floor=1.0)
    return statistics.median(ours), statistics.median(theirs)


def _info(benchmark, lm, art, **extra):
    benchmark.group = "gpt"
    benchmark.extra_info.update({"scheme": lm.card.quantization.scheme, "threads": 1,
                                 "model": art["ckpt"].name, "model_bytes": art["onnx"].stat().st_size, **extra})


def test_gpt_decode_speedup_vs_pytorch_eager(benchmark, gate, pair):
    model, lm, ids, art = pair
    tokens, agree, ours, theirs = decode_side_by_side(model, lm, ids)
    benchmark.pedantic(lambda: lm.run([ids], SamplingOptions(max_new_tokens=NEW_TOKENS, heal=False)),
                       rounds=ROUNDS, iterations=1)
    _info(benchmark, lm, art, edgekit_tokens_per_s=ours, pytorch_eager_tokens_per_s=theirs,
          greedy_agreement_vs_torch=agree)
    gate("gpt.decode_speedup_vs_torch", ours / theirs)


def test_gpt_two_threads_vs_one(benchmark, gate, pair):
    model, lm1, ids, art = pair
    ratio, (t1, t2) = threads_ratio(str(art["onnx"]), prompt_ids=ids, new_tokens=NEW_TOKENS, rounds=ROUNDS)
    check_same_tokens(t1, t2)
    check_decode(model, ids, t2, expected=NEW_TOKENS, floor=agreement_floor(lm1))
    lm2 = load(art["onnx"], threads=2)
    benchmark.pedantic(lambda: lm2.run([ids], SamplingOptions(max_new_tokens=NEW_TOKENS, heal=False)),
                       rounds=ROUNDS, iterations=1)
    _info(benchmark, lm1, art, threads=2)
    gate("gpt.threads2_vs_threads1", ratio)


def test_gpt_time_to_first_token_vs_pytorch(benchmark, gate, pair):
    model, lm, ids, art = pair
    ours, theirs = first_token_side_by_side(model, lm, ids)
    benchmark.pedantic(lambda: lm.run([ids], SamplingOptions(max_new_tokens=1, heal=False)), rounds=ROUNDS,
                       iterations=1)
    _info(benchmark, lm, art, ttft_ms=ours, pytorch_ttft_ms=theirs)
    gate("gpt.ttft_speedup_vs_torch", theirs / ours)


def test_gpt_every_quantization_scheme_within_budget(benchmark, gate, pair):
    """The export accounted for every scheme on this trained checkpoint: each built one holds the quality
    budget on the report half of the held-out data or was rejected with its reason recorded; the rest
    were not built because a smaller one passed (auto takes the smallest passing)."""
    _, lm, _, art = pair
    ver = lm.card.verification
    tried = {s["step"].split(":", 1)[1] for s in ver["steps"] if s["step"].startswith("quantize:")}
    rejected = (ver.get("auto") or {}).get("rejected") or {}
    not_built = {s for s, why in rejected.items() if why.startswith("cannot win")}
    assert tried | not_built == {"int4", "int8-dynamic", "int8-nbits", "int8-static"} and not tried & not_built
    accepted = benchmark(check_schemes, lm.card)
    _info(benchmark, lm, art, accepted=accepted, rejected=(ver.get("auto") or {}).get("rejected"),
          slices=ver.get("slices"))
    assert accepted, "auto accepted no quantized scheme"
    gate("gpt.worst_scheme_val_loss_delta_pct", max(v["val_loss_delta_pct"] for v in accepted.values()))
    gate("gpt.worst_scheme_greedy_agreement", min(v["greedy_agreement"] for v in accepted.values()))


def test_gpt_default_export_size(benchmark, gate, pair):
    _, lm, _, art = pair
    size = benchmark(lambda: art["onnx"].stat().st_size)
    _info(benchmark, lm, art, fp32_bytes=fp32_bytes(lm.card))
    gate("gpt.file_bytes_over_fp32", size / fp32_bytes(lm.card))


def test_gpt_load_import_and_peak_memory(benchmark, gate, pair):
    """Fresh processes: import time, load time and peak resident memory while generating 48 tokens."""
    _, lm, _, art = pair
    res = benchmark.pedantic(fresh_process, args=(str(art["onnx"]),), rounds=1, iterations=1)
    _info(benchmark, lm, art, **res)
    assert res["tokens"] == 48
    gate("gpt.peak_rss_mb", res["peak_rss_mb"])
    gate("gpt.import_runtime_s", res["import_runtime_s"])


def test_gpt_sampled_decode_as_fast_as_greedy(benchmark, gate, pair):
    """Sampling (T 0.8, top-k 40) runs in the file's Loop like greedy: both timed alternately, same run.
    The answer: the same seed gives the same tokens, and every sampled token is among PyTorch's top 40."""
    model, lm, ids, art = pair
    greedy = SamplingOptions(max_new_tokens=NEW_TOKENS, heal=False)
    sampled = SamplingOptions(max_new_tokens=NEW_TOKENS, heal=False, temperature=0.8, top_k=40, seed=1)
    first = lm.run([ids], sampled)[0].token_ids
    lm.run([ids], greedy)
    g, s = [], []
    for _ in range(2 * ROUNDS):  # alternating; the gate is the median of per-round ratios (cancels load drift)
        g.append(lm.run([ids], greedy)[0].tokens_per_s)
        out = lm.run([ids], sampled)[0]
        s.append(out.tokens_per_s)
    check_same_tokens(first, out.token_ids, what="the same seed")
    in_top_k = check_top_k(model, ids, out.token_ids, k=40, floor=agreement_floor(lm))
    assert lm.sampler_in_graph, "the export carries the in-graph sampler"
    benchmark.pedantic(lambda: lm.run([ids], sampled), rounds=ROUNDS, iterations=1)
    _info(benchmark, lm, art, greedy_tokens_per_s=statistics.median(g), sampled_tokens_per_s=statistics.median(s),
          sampled_in_torch_top_k=in_top_k)
    gate("gpt.sampled_vs_greedy_decode", statistics.median(b / a for a, b in zip(g, s)))


def test_gpt_bytes_per_parameter(benchmark, gate, pair):
    """The default file's bytes per model parameter (the tied embedding counted once)."""
    model, lm, _, art = pair
    params = sum(p.numel() for p in model.parameters())  # tied wte/lm_head counted once by nn.Module
    size = benchmark(lambda: art["onnx"].stat().st_size)
    _info(benchmark, lm, art, params=params)
    gate("gpt.bytes_per_param", size / params)
