"""Peers: edgekit against llama.cpp's own binaries on the same weights, interleaved in one run.

    LLAMACPP_BIN=/path/to/llama.cpp/build/bin pip install '.[peers]'   # see benchmarks/llamacpp.py
    EDGEKIT_BENCH_GPT=runs/p3/phase3.pt pytest benchmarks/test_peers.py -s     # prints the tables
    EDGEKIT_BENCH_ONNX=runs/p3/phase3.onnx ...    # reuse that checkpoint's export instead of exporting again
    EDGEKIT_PEER_THREADS=1,2 EDGEKIT_PEER_ROUNDS=7 ...                  # the defaults

The benchmarked checkpoint ($EDGEKIT_BENCH_GPT, else the shipped trained soma-stdlib.pt) is exported with
edgekit's default (`edgekit export`, auto) and converted to GGUF (benchmarks/peers_gguf.py, llama.cpp's
GPT-2 architecture) and quantized by llama.cpp's own llama-quantize to q8_0 and q4_0. Each round, at each
thread count, runs in turn: edgekit's greedy and sampled decode (64 new tokens after the same 14-token
prompt) and prefill (200 tokens); llama-bench (decode 64 and prefill 200, one repetition after its own
warm-up) on q8_0 and q4_0; llama-completion sampling 64 tokens (top-k 40, T 0.8) on q8_0. A ratio is the
median of per-round ratios (edgekit / llama.cpp): load on this shared machine moves both alike.
Decode rates count tokens after the first; prefill rates are prompt tokens over the prefill call.

The physical limit beside them: the bytes each engine must read per decoded token (every weight but the
position table, the tied matrix once: it is the head) over this machine's measured read bandwidth at the
same thread count (numpy reductions over 512 MB arrays, one per thread): the fastest decode possible.
Never part of `make test`; the conversion is checked first (tokenizer and greedy text), because a wrong
conversion makes the speed comparison meaningless.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "def get_value(self, key):\n    return"
NEW_TOKENS = 64
PREFILL_TOKENS = 200
TEMPERATURE, TOP_K = 0.8, 40


def _threads() -> list[int]:
    return [int(t) for t in os.environ.get("EDGEKIT_PEER_THREADS", "1,2").split(",")]


ROUNDS = int(os.environ.get("EDGEKIT_PEER_ROUNDS", "7"))


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    llamacpp.binaries()
    ckpt = Path(os.environ.get("EDGEKIT_BENCH_GPT", ROOT / "examples" / "reference" / "soma-stdlib.pt"))
    out = tmp_path_factory.mktemp("peers")
    if os.environ.get("EDGEKIT_BENCH_ONNX"):  # an export of that checkpoint made earlier (saves minutes)
        onnx_path = Path(os.environ["EDGEKIT_BENCH_ONNX"])
    else:
        onnx_path = out / f"{ckpt.stem}.onnx"
        r = subprocess.run([sys.executable, "-m", "edgekit.cli", "export", str(ckpt), "-o", str(onnx_path), "--quiet"],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"edgekit export failed: {r.stderr[-500:]}"
    return {"ckpt": ckpt, "onnx": onnx_path, **llamacpp.gguf_files(ckpt, out)}


def test_gguf_tokenizer_and_greedy_text_match(benchmark, peers):
    """llama.cpp tokenizes the prompt as edgekit does and its f32 GGUF continues it with PyTorch's greedy
    text up to PyTorch's first near tie (llama.cpp keeps its KV cache in f16 and a table GELU)."""
    import torch

    from edgekit.export.gpt import prepare_model
    from edgekit.runtime import load
    from edgekit.train.checkpoint import load_checkpoint

    benchmark.group = "peers"
    lm = load(peers["onnx"], threads=1)
    ids = lm.tokenizer.encode(PROMPT)
    got = benchmark.pedantic(lambda: llamacpp.completion(peers["f32"], PROMPT, n=32, threads=2), rounds=1, iterations=1)
    assert got["prompt_ids"] == ids, f"llama.cpp tokenized the prompt as {got['prompt_ids']}, edgekit as {ids}"
    model, _ = prepare_model(load_checkpoint(peers["ckpt"]))
    seq, gaps = list(ids), []
    with torch.inference_mode():
        for _ in range(32):
            logits = model(torch.tensor([seq]))[0][0, -1]
            top2 = torch.topk(logits, 2).values
            gaps.append(float(top2[0] - top2[1]))
            seq.append(int(logits.argmax()))
    tie = next((i for i, g in enumerate(gaps) if g < 0.05), len(gaps))  # the first near tie, if any
    want = lm.tokenizer.decode(seq[len(ids):len(ids) + tie])
    benchmark.extra_info.update({"prompt_ids": ids, "tokens_before_first_near_tie": tie, "llama_text": got["text"]})
    want = want.rstrip("\n")  # llamacpp.completion drops the newlines llama-completion's output ends with
    assert got["text"].startswith(want), f"llama.cpp's greedy text {got['text'][:80]!r} is not PyTorch's {want!r}"


def _bandwidth(threads: int) -> float:
    """Bytes per second read by ``threads`` numpy reductions over their own 512 MB arrays, best of 3."""
    arrays = [np.ones(64 << 20, dtype=np.uint64) for _ in range(threads)]
    best = 0.0
    for _ in range(3):
        ts = [threading.Thread(target=np.bitwise_or.reduce, args=(a,)) for a in arrays]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = max(best, sum(a.nbytes for a in arrays) / (time.perf_counter() - t0))
    return best


def _edgekit_bytes_per_token(path: Path) -> int:
    """Bytes the decode step reads: every MatMulNBits / MatMul weight (the tied matrix as the head)."""
    m = onnx.load(path, load_external_data=False)
    sizes = {t.name: len(t.raw_data) or int(np.prod(t.dims)) * 4 for t in m.graph.initializer}
    body = [a.g for n in m.graph.node if n.op_type == "Loop" for a in n.attribute if a.name == "body"]
    nodes = list(m.graph.node) + (list(body[0].node) if body else [])
    read = {x for n in nodes if n.op_type in ("MatMulNBits", "MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul")
            for x in n.input if x in sizes}
    return sum(sizes[x] for x in read)


def _llamacpp_bytes_per_token(path: Path) -> int:
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors if not t.name.startswith("position_embd"))


def _round(lm, ids, prefill_ids, threads: int, peers, seed: int) -> dict:
    from edgekit.runtime.gpt import SamplingOptions

    r = {}
    r["ek_greedy"] = lm.run([ids], SamplingOptions(max_new_tokens=NEW_TOKENS, heal=False))[0].tokens_per_s
    r["ek_sampled"] = lm.run([ids], SamplingOptions(max_new_tokens=NEW_TOKENS, heal=False, temperature=TEMPERATURE,
                                                    top_k=TOP_K, seed=seed))[0].tokens_per_s
    t0 = time.perf_counter()
    lm.prefill([prefill_ids])
    r["ek_prefill"] = len(prefill_ids) / (time.perf_counter() - t0)
    for q in ("q8_0", "q4_0"):
        b = llamacpp.bench(peers[q], threads=threads, n_prompt=PREFILL_TOKENS, n_gen=NEW_TOKENS)
        r[f"ll_{q}_greedy"], r[f"ll_{q}_prefill"] = b["tg"], b["pp"]
    r["ll_q8_0_sampled"] = llamacpp.completion(peers["q8_0"], PROMPT, n=NEW_TOKENS, threads=threads,
                                               temperature=TEMPERATURE, top_k=TOP_K, seed=seed)["tokens_per_s"]
    return r


def test_decode_and_prefill_vs_llamacpp(benchmark, gate, peers):
    """Greedy and sampled decode and prefill, edgekit's default export vs llama.cpp q8_0 and q4_0, at 1
    and 2 threads, interleaved rounds; file sizes; the physical limit of each."""
    from edgekit.runtime import load

    benchmark.group = "peers"
    ek_bytes = peers["onnx"].stat().st_size
    sizes = {"edgekit": ek_bytes, **{q: peers[q].stat().st_size for q in ("q8_0", "q4_0")}}
    per_token = {"edgekit": _edgekit_bytes_per_token(peers["onnx"]),
                 **{q: _llamacpp_bytes_per_token(peers[q]) for q in ("q8_0", "q4_0")}}
    results, lines = {}, []
    for threads in _threads():
        lm = load(peers["onnx"], threads=threads)
        ids = lm.tokenizer.encode(PROMPT)
        prefill_ids = (ids * (PREFILL_TOKENS // len(ids) + 1))[:PREFILL_TOKENS]
        _round(lm, ids, prefill_ids, threads, peers, seed=0)  # warm-up, not counted
        rounds = [_round(lm, ids, prefill_ids, threads, peers, seed=s) for s in range(1, ROUNDS + 1)]
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        ratio = {f"{k}_vs_{q}": statistics.median(r[f"ek_{k}"] / r[f"ll_{q}_{k}"] for r in rounds)
                 for k in ("greedy", "prefill") for q in ("q8_0", "q4_0")}
        ratio["sampled_vs_q8_0"] = statistics.median(r["ek_sampled"] / r["ll_q8_0_sampled"] for r in rounds)
        bw = _bandwidth(threads)
        limit = {k: bw / v for k, v in per_token.items()}  # tok/s if reading the weights were all it took
        results[threads] = {"median": med, "ratio": ratio, "bandwidth_gb_s": bw / 1e9, "limit_tok_s": limit}
        lines += [f"| {threads} | greedy decode | {med['ek_greedy']:,.0f} | {med['ll_q8_0_greedy']:,.0f} | "
                  f"{med['ll_q4_0_greedy']:,.0f} | {ratio['greedy_vs_q8_0']:.2f}x / {ratio['greedy_vs_q4_0']:.2f}x |",
                  f"| {threads} | sampled decode (T {TEMPERATURE}, top-k {TOP_K}) | {med['ek_sampled']:,.0f} | "
                  f"{med['ll_q8_0_sampled']:,.0f} | – | {ratio['sampled_vs_q8_0']:.2f}x / – |",
                  f"| {threads} | prefill {PREFILL_TOKENS} | {med['ek_prefill']:,.0f} | {med['ll_q8_0_prefill']:,.0f} | "
                  f"{med['ll_q4_0_prefill']:,.0f} | {ratio['prefill_vs_q8_0']:.2f}x / {ratio['prefill_vs_q4_0']:.2f}x |",
                  f"| {threads} | physical limit ({bw / 1e9:.0f} GB/s read) | {limit['edgekit']:,.0f} | "
                  f"{limit['q8_0']:,.0f} | {limit['q4_0']:,.0f} | decode at {med['ek_greedy'] / limit['edgekit']:.0%} / "
                  f"{med['ll_q8_0_greedy'] / limit['q8_0']:.0%} / {med['ll_q4_0_greedy'] / limit['q4_0']:.0%} of it |"]
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update({"checkpoint": str(peers["ckpt"]), "rounds": ROUNDS, "sizes": sizes,
                                 "bytes_per_token": per_token, "results": results,
                                 "scheme": load(peers["onnx"]).card.quantization.scheme})
    print(f"\n{peers['ckpt'].name}: edgekit default export ({ek_bytes / 1e6:.1f} MB) vs llama.cpp q8_0 "
          f"({sizes['q8_0'] / 1e6:.1f} MB) and q4_0 ({sizes['q4_0'] / 1e6:.1f} MB); tok/s, medians of {ROUNDS} "
          "interleaved rounds; ratio = median of per-round ratios, vs q8_0 / vs q4_0")
    print("| threads | | edgekit | llama.cpp q8_0 | llama.cpp q4_0 | ratio |\n| ---: | --- | ---: | ---: | ---: | ---: |")
    print("\n".join(lines))
    print(f"bytes read per decoded token: edgekit {per_token['edgekit'] / 1e6:.1f} MB, q8_0 {per_token['q8_0'] / 1e6:.1f} MB, "
          f"q4_0 {per_token['q4_0'] / 1e6:.1f} MB")
    broken = []
    for threads, res in results.items():
        for key, value in (("gpt.greedy_vs_llamacpp_q8_0", res["ratio"]["greedy_vs_q8_0"]),
                           ("gpt.sampled_vs_llamacpp_q8_0", res["ratio"]["sampled_vs_q8_0"]),
                           ("gpt.prefill_vs_llamacpp_q8_0", res["ratio"]["prefill_vs_q8_0"])):
            try:
                gate(key, value)
            except AssertionError as e:
                broken.append(f"{threads} thread(s): {e}")
    try:
        gate("gpt.file_bytes_vs_llamacpp_q4_0", sizes["edgekit"] / sizes["q4_0"])
    except AssertionError as e:
        broken.append(str(e))
    if broken:  # every ratio recorded and checked; the messages alone, not this function's source
        pytest.fail("\n".join(broken), pytrace=False)
