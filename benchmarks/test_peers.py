"""Peers: edgekit against llama.cpp q8_0 on the same weights, interleaved in one run, 1 thread.

    pip install '.[peers]'   # llama-cpp-python built from its sdist (see README), gguf
    EDGEKIT_BENCH_GPT=runs/p3/phase3.pt pytest benchmarks/test_peers.py -s     # prints the table
    EDGEKIT_BENCH_ONNX=runs/p3/phase3.onnx ...    # reuse that checkpoint's export instead of exporting again

The benchmarked checkpoint ($EDGEKIT_BENCH_GPT, else the shipped trained soma-stdlib.pt) is exported with
edgekit's default (`edgekit export`) and converted to GGUF (benchmarks/peers_gguf.py: gguf's writer,
GPT-2 architecture, llama.cpp's own q8_0 quantizer). Both engines get the same 8 prompt ids (edgekit's
encoding) and make 48 new tokens, greedy and sampled (T 0.8, top-k 40), alternating round by round.
Decode rate = tokens after the first / time after the first token, for both (prefill excluded); the
table shows each engine's median rate and the median of the per-round ratios.
llama.cpp is driven through llama-cpp-python's C bindings (llama_decode + its sampler chain, as its own
llama-cli loop does), not the high-level Llama.generate, whose per-token Python work would handicap it.
Never part of `make test` (no gate mark); the conversion is checked against PyTorch first, because a
wrong conversion makes the speed comparison meaningless.
"""
from __future__ import annotations

import ctypes
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

INSTALL = ("peer benchmark needs llama-cpp-python (built from source) and gguf: CMAKE_ARGS='-DGGML_NATIVE=ON "
           "-DLLAVA_BUILD=OFF' pip install -c constraints.txt --no-binary llama-cpp-python -e '.[peers]' "
           "(README: 'Against llama.cpp')")
try:
    import gguf  # noqa: F401
    import llama_cpp
    from llama_cpp._logger import set_verbose
except ImportError:
    pytest.skip(INSTALL, allow_module_level=True)
set_verbose(False)  # llama.cpp's load log (hundreds of lines on stderr) at error level only

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers_gguf import to_gguf  # noqa: E402

from edgekit.export.gpt import prepare_model  # noqa: E402
from edgekit.models.gpt import generate_cached  # noqa: E402
from edgekit.runtime import load  # noqa: E402
from edgekit.runtime.gpt import SamplingOptions  # noqa: E402
from edgekit.train.checkpoint import load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "def get_value(self, key):\n    return"
NEW_TOKENS = 48
ROUNDS = 15
TEMPERATURE, TOP_K = 0.8, 40


class LlamaCpp:
    """One llama.cpp model + context (1 thread) and a decode loop over the C API."""

    def __init__(self, path: Path, n_ctx: int):
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
        cp.n_threads = cp.n_threads_batch = 1
        cp.no_perf = False
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.eot = llama_cpp.llama_vocab_eos(self.vocab)

    def close(self):
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)

    def _sampler(self, temperature: float, top_k: int | None, seed: int):
        s = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if temperature == 0:
            llama_cpp.llama_sampler_chain_add(s, llama_cpp.llama_sampler_init_greedy())
        else:  # llama.cpp's own order: top-k, temperature, then the draw
            llama_cpp.llama_sampler_chain_add(s, llama_cpp.llama_sampler_init_top_k(top_k))
            llama_cpp.llama_sampler_chain_add(s, llama_cpp.llama_sampler_init_temp(temperature))
            llama_cpp.llama_sampler_chain_add(s, llama_cpp.llama_sampler_init_dist(seed))
        return s

    def _decode(self, ids: list[int]) -> None:
        arr = (llama_cpp.llama_token * len(ids))(*ids)
        rc = llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(arr, len(ids)))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def generate(self, ids: list[int], n: int, temperature: float = 0.0, top_k: int | None = None,
                 seed: int = 0) -> tuple[list[int], float, float]:
        """-> new ids, decode tok/s after the first token (wall clock), and llama.cpp's own eval-only tok/s."""
        smpl = self._sampler(temperature, top_k, seed)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        self._decode(ids)  # prefill
        tok = llama_cpp.llama_sampler_sample(smpl, self.ctx, -1)
        out = [tok]
        llama_cpp.llama_perf_context_reset(self.ctx)
        t_first = time.perf_counter()
        one = (llama_cpp.llama_token * 1)()
        while len(out) < n and tok != self.eot:
            one[0] = tok
            if llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(one, 1)) != 0:
                raise RuntimeError("llama_decode failed")
            tok = llama_cpp.llama_sampler_sample(smpl, self.ctx, -1)
            out.append(tok)
        elapsed = time.perf_counter() - t_first
        perf = llama_cpp.llama_perf_context(self.ctx)
        llama_cpp.llama_sampler_free(smpl)
        if out[-1] == self.eot:
            out.pop()
        rate = (len(out) - 1) / elapsed if len(out) > 1 else 0.0
        eval_rate = perf.n_eval / (perf.t_eval_ms / 1e3) if perf.t_eval_ms > 0 else 0.0
        return out, rate, eval_rate

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenizer (from the GGUF's metadata), no BOS, special text kept as text."""
        raw = text.encode("utf-8")
        buf = (llama_cpp.llama_token * (len(raw) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, False)
        if n < 0:
            raise RuntimeError(f"llama_tokenize needs {-n} slots")
        return list(buf[:n])

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits (T, V) at every position of ``ids`` (one batch, all outputs requested)."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        batch = llama_cpp.llama_batch_init(len(ids), 0, 1)
        try:
            for i, t in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, i, 1, 1
                batch.seq_id[i][0] = 0
            batch.n_tokens = len(ids)
            if llama_cpp.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            ptr = llama_cpp.llama_get_logits(self.ctx)
            return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                         shape=(len(ids), self.n_vocab)).copy()
        finally:
            llama_cpp.llama_batch_free(batch)


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    ckpt = Path(os.environ.get("EDGEKIT_BENCH_GPT", ROOT / "examples" / "reference" / "soma-stdlib.pt"))
    out = tmp_path_factory.mktemp("peers")
    if os.environ.get("EDGEKIT_BENCH_ONNX"):  # an export of that checkpoint made earlier (saves minutes)
        onnx_path = Path(os.environ["EDGEKIT_BENCH_ONNX"])
    else:
        onnx_path = out / f"{ckpt.stem}.onnx"
        r = subprocess.run([sys.executable, "-m", "edgekit.cli", "export", str(ckpt), "-o", str(onnx_path), "--quiet"],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"edgekit export failed: {r.stderr[-500:]}"
    f32 = to_gguf(ckpt, out / f"{ckpt.stem}-f32.gguf")
    q8 = to_gguf(ckpt, out / f"{ckpt.stem}-q8_0.gguf", outtype="q8_0")
    lm = load(onnx_path, threads=1)
    ids = lm.tokenizer.encode(PROMPT)[:8]
    assert len(ids) == 8
    model, cfg = prepare_model(load_checkpoint(ckpt))
    return {"ckpt": ckpt, "onnx": onnx_path, "f32": f32, "q8_0": q8, "lm": lm, "ids": ids, "model": model,
            "block_size": cfg["block_size"]}


def test_gguf_f32_matches_pytorch(benchmark, peers):
    """The f32 GGUF in llama.cpp gives PyTorch's logits and greedy tokens (a wrong conversion would not)."""
    benchmark.group = "peers"
    torch.set_num_threads(1)
    model, ids = peers["model"], peers["ids"]
    ref = generate_cached(model, ids, NEW_TOKENS)
    seq = ids + ref
    with torch.inference_mode():
        want = model(torch.tensor([seq]))[0][0].numpy()  # (T, V)
    llm = LlamaCpp(peers["f32"], peers["block_size"])
    try:
        got = benchmark.pedantic(lambda: llm.logits(seq), rounds=1, iterations=1)
        free, _, _ = llm.generate(ids, NEW_TOKENS)
    finally:
        llm.close()
    diff = np.abs(got - want)
    top2 = np.sort(want, axis=-1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    agree = got.argmax(-1) == want.argmax(-1)
    first_diff = next((i for i, (a, b) in enumerate(zip(free, ref)) if a != b), None)
    benchmark.extra_info.update({"max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
                                 "logit_scale": float(np.abs(want).max()), "positions": len(seq),
                                 "argmax_agreement": float(agree.mean()),
                                 "free_running_first_difference": first_diff})
    print(f"\nf32 GGUF vs PyTorch over {len(seq)} positions: max |logit diff| {diff.max():.2e} "
          f"(logits up to {np.abs(want).max():.1f}), argmax agreement {agree.mean():.3f}, "
          f"free-running greedy identical: {free == ref}")
    # ggml keeps the KV cache in f16 and its GELU is the tanh form from a table (PyTorch's is erf): logits
    # differ by ~1e-3 of their scale (phase3: 2.3e-2 on logits up to 24), a wrong layout by far more
    assert diff.max() < 5e-3 * max(1.0, float(np.abs(want).max())), "llama.cpp's logits are not PyTorch's"
    # teacher forced, every position: same argmax unless PyTorch's top two are closer than that noise
    tie = 2 * float(diff.max())
    assert all(agree | (gap < tie)), f"argmax differs at positions {np.flatnonzero(~agree & (gap >= tie))[:5]}"
    if first_diff is not None:  # free running may only part at such a near tie
        assert gap[len(ids) - 1 + first_diff] < tie, f"greedy tokens part at {first_diff} without a near tie"


def test_gguf_tokenizer_matches_edgekit(benchmark, peers):
    """The GGUF's vocabulary and merges tokenize real code as edgekit does (GPT-2's, or merges recovered
    from an edgekit-trained BPE's ranks): the file is a complete model for llama.cpp, not just weights."""
    benchmark.group = "peers"
    text = (ROOT / "runtime" / "tokenizer.py").read_text(encoding="utf-8")[:6000] + " naïve café → 東京 😀\n"
    want = peers["lm"].tokenizer.encode(text)
    llm = LlamaCpp(peers["f32"], peers["block_size"])
    try:
        got = benchmark.pedantic(lambda: llm.tokenize(text), rounds=1, iterations=1)
    finally:
        llm.close()
    benchmark.extra_info.update({"tokens": len(want), "same": got == want})
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    assert got == want, f"llama.cpp tokenizes differently from token {first} ({len(got)} vs {len(want)} tokens)"


def test_decode_vs_llamacpp_q8_0(benchmark, gate, peers):
    """Greedy and sampled decode tok/s, edgekit default export vs llama.cpp q8_0, interleaved rounds."""
    benchmark.group = "peers"
    lm, ids = peers["lm"], peers["ids"]
    llm = LlamaCpp(peers["q8_0"], peers["block_size"])
    greedy = SamplingOptions(max_new_tokens=NEW_TOKENS, heal=False)
    rates = {k: [] for k in ("ek_greedy", "ll_greedy", "ek_sampled", "ll_sampled", "ll_greedy_eval",
                             "ll_sampled_eval")}
    seeds = iter(range(10_000))

    def one_round():
        seed = next(seeds)
        g = lm.run([ids], greedy)[0]
        lg, lr, le = llm.generate(ids, NEW_TOKENS)
        s = lm.run([ids], SamplingOptions(max_new_tokens=NEW_TOKENS, temperature=TEMPERATURE, top_k=TOP_K,
                                           seed=seed, heal=False))[0]
        ls, sr, se = llm.generate(ids, NEW_TOKENS, TEMPERATURE, TOP_K, seed)
        rates["ek_greedy"].append(g.tokens_per_s)
        rates["ll_greedy"].append(lr)
        rates["ll_greedy_eval"].append(le)
        rates["ek_sampled"].append(s.tokens_per_s)
        rates["ll_sampled"].append(sr)
        rates["ll_sampled_eval"].append(se)
        return g.token_ids, lg, len(s.token_ids), len(ls)

    try:
        one_round()  # warm-up, not counted
        for v in rates.values():
            v.clear()
        ek_tokens, ll_tokens, ek_n, ll_n = benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    finally:
        llm.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    ek_bytes, ll_bytes = peers["onnx"].stat().st_size, peers["q8_0"].stat().st_size
    n_params = sum(p.numel() for p in peers["model"].parameters())
    # each round's two runs are seconds apart: the median of per-round ratios cancels the load drift of a
    # shared machine better than a ratio of medians taken over the whole run
    paired = {k: statistics.median(e / ll for e, ll in zip(rates[f"ek_{k}"], rates[f"ll_{k}"]))
              for k in ("greedy", "sampled")}
    ratios = {**paired, "file": ek_bytes / ll_bytes}
    same_prefix = next((i for i, (a, b) in enumerate(zip(ek_tokens, ll_tokens)) if a != b), len(ek_tokens))
    ll_tensor_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(peers["q8_0"]).tensors)
    scheme = lm.card.quantization.scheme
    benchmark.extra_info.update({
        "checkpoint": str(peers["ckpt"]), "scheme": scheme, "threads": 1, "rounds": ROUNDS,
        "prompt_tokens": len(ids), "new_tokens": NEW_TOKENS, "temperature": TEMPERATURE, "top_k": TOP_K,
        "model_bytes": ek_bytes, "llamacpp_q8_0_bytes": ll_bytes, "llamacpp_q8_0_tensor_bytes": ll_tensor_bytes,
        "params": n_params,
        "edgekit_greedy_tokens_per_s": med["ek_greedy"], "llamacpp_greedy_tokens_per_s": med["ll_greedy"],
        "edgekit_sampled_tokens_per_s": med["ek_sampled"], "llamacpp_sampled_tokens_per_s": med["ll_sampled"],
        "llamacpp_greedy_eval_only_tokens_per_s": med["ll_greedy_eval"],
        "llamacpp_sampled_eval_only_tokens_per_s": med["ll_sampled_eval"],
        "greedy_vs_llamacpp_q8_0": ratios["greedy"], "sampled_vs_llamacpp_q8_0": ratios["sampled"],
        "file_bytes_vs_llamacpp_q8_0": ratios["file"],
        "greedy_tokens_same_as_llamacpp_before_parting": same_prefix,
        "last_sampled_lengths": [ek_n, ll_n], "all_rates": rates})
    print(f"\n{peers['ckpt'].name}: {n_params:,} parameters, edgekit default export ({scheme}) vs llama.cpp q8_0, "
          f"1 thread, {len(ids)}-token prompt, {NEW_TOKENS} new tokens, median of {ROUNDS} interleaved rounds "
          f"(ratio: median of per-round ratios)")
    print("| | edgekit | llama.cpp q8_0 | ratio |\n| --- | ---: | ---: | ---: |")
    print(f"| greedy decode | {med['ek_greedy']:,.0f} tok/s | {med['ll_greedy']:,.0f} tok/s | "
          f"{ratios['greedy']:.2f}x |")
    print(f"| sampled decode (T {TEMPERATURE}, top-k {TOP_K}) | {med['ek_sampled']:,.0f} tok/s | "
          f"{med['ll_sampled']:,.0f} tok/s | {ratios['sampled']:.2f}x |")
    print(f"| file | {ek_bytes / 1e6:.1f} MB ({scheme}) | {ll_bytes / 1e6:.1f} MB | {ratios['file']:.2f}x |")
    print(f"llama.cpp's file: {ll_tensor_bytes / 1e6:.2f} MB of tensors + {(ll_bytes - ll_tensor_bytes) / 1e6:.2f} MB "
          f"of metadata (its tokenizer); its eval-only rate (perf counters, sampling excluded): greedy "
          f"{med['ll_greedy_eval']:,.0f} tok/s, sampled {med['ll_sampled_eval']:,.0f} tok/s; greedy tokens of the two "
          f"quantized files part after {same_prefix} of {len(ek_tokens)}")
    broken = []
    for name in ("greedy", "sampled", "file"):
        key = f"gpt.{name}_vs_llamacpp_q8_0" if name != "file" else "gpt.file_bytes_vs_llamacpp_q8_0"
        try:
            gate(key, ratios[name])
        except AssertionError as e:
            broken.append(str(e))
    if broken:  # every ratio recorded and checked; the messages alone, not this function's source
        pytest.fail("\n".join(broken), pytrace=False)
