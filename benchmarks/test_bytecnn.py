"""bytecnn gates: one-word latency and batch throughput against PyTorch eager (same run), file sizes, quality.

    pytest benchmarks/test_bytecnn.py                                            # the shipped nano-cnn
    EDGEKIT_BENCH_NANO=runs/nano/nano-cnn.pt pytest benchmarks/test_bytecnn.py   # your trained nano-cnn

Without the variable the gates run on examples/reference/nano-cnn-wordfreq.pt, a nano-cnn trained with
the preset's default recipe (tests/test_bytecnn.py checks it still matches the defaults): no short
training in the test session can pass the Jabberwocky Protocol, and a trained model is what speed is
measured on. The quality gates (Spearman three ways, the protocol) go through edgekit.runtime.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.export.bytecnn import INT8_TOLERANCE
from edgekit.models.bytecnn import encode_words
from edgekit.runtime import load
from edgekit.runtime.bytecnn import normalize
from edgekit.train.checkpoint import load_checkpoint

from conftest import edgekit

WORD = "bandersnatch"
BATCH_WORDS = 20_000
CALLS = 3000  # single-word calls per side for the p50
REFERENCE_NANO = Path(__file__).resolve().parent.parent / "examples" / "reference" / "nano-cnn-wordfreq.pt"


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    """A nano-cnn checkpoint (EDGEKIT_BENCH_NANO or a short run) with its default and fp32 exports."""
    ckpt = os.environ.get("EDGEKIT_BENCH_NANO") or REFERENCE_NANO
    out = tmp_path_factory.mktemp("bench_nano")
    paths = {}
    for scheme in ("auto", "fp32"):
        paths[scheme] = out / f"nano.{scheme}.onnx"
        edgekit("export", ckpt, "-o", paths[scheme], "--quant", scheme, "--quiet")
    model = load_checkpoint(ckpt).build_model()
    scorer = load(paths["auto"], threads=1)
    return {"ckpt": Path(ckpt), "paths": paths, "model": model, "scorer": scorer}


def _torch_score(model, words: list[str], max_len: int) -> np.ndarray:
    """The same model in PyTorch eager, words in and scores out (normalization and encoding included)."""
    x = torch.from_numpy(encode_words([normalize(w) for w in words], max_len=max_len))
    with torch.no_grad():
        return np.concatenate([model(x[i:i + 4096]).numpy() for i in range(0, len(x), 4096)])


def _p50_us(fn, calls: int = CALLS) -> float:
    for _ in range(200):
        fn()
    times = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t
    return float(np.median(times) * 1e6)


def _info(benchmark, nano, **extra):
    benchmark.extra_info.update({"scheme": nano["scorer"].card.quantization.scheme, "threads": 1,
                                 "model_bytes": nano["paths"]["auto"].stat().st_size, **extra})


@pytest.mark.gate
def test_bytecnn_single_word_latency_vs_pytorch(benchmark, gate, nano):
    benchmark.group = "bytecnn"
    torch.set_num_threads(1)
    scorer, model = nano["scorer"], nano["model"]
    ours_rounds, theirs_rounds = [], []
    for _ in range(3):  # alternate so both sides see the same machine load
        ours_rounds.append(_p50_us(lambda: scorer.score_one(WORD)))
        theirs_rounds.append(_p50_us(lambda: _torch_score(model, [WORD], scorer.max_len), calls=CALLS // 3))
    ours, theirs = statistics.median(ours_rounds), statistics.median(theirs_rounds)
    got = benchmark(scorer.score_one, WORD)
    assert abs(got - float(_torch_score(model, [WORD], scorer.max_len)[0])) <= INT8_TOLERANCE
    _info(benchmark, nano, edgekit_p50_us=ours, pytorch_eager_p50_us=theirs)
    gate("bytecnn.single_word_p50_us", ours)
    gate("bytecnn.single_word_speedup_vs_torch", theirs / ours)


@pytest.mark.gate
def test_bytecnn_batch_throughput_vs_pytorch(benchmark, gate, nano):
    benchmark.group = "bytecnn"
    torch.set_num_threads(1)
    from edgekit.train.wordfreq_data import load_words

    words = load_words(limit=BATCH_WORDS).words
    scorer, model = nano["scorer"], nano["model"]
    scorer.score(words), _torch_score(model, words, scorer.max_len)  # warm-up
    ours, theirs = [], []
    for _ in range(5):  # interleaved rounds: the gate is the median of per-round ratios
        t = time.perf_counter()
        got = scorer.score(words)
        ours.append(len(words) / (time.perf_counter() - t))
        t = time.perf_counter()
        ref = _torch_score(model, words, scorer.max_len)
        theirs.append(len(words) / (time.perf_counter() - t))
    benchmark.pedantic(scorer.score, args=(words,), rounds=3, iterations=1)
    assert np.abs(got - ref).max() <= INT8_TOLERANCE
    _info(benchmark, nano, edgekit_words_per_s=statistics.median(ours),
          pytorch_eager_words_per_s=statistics.median(theirs), words=len(words))
    gate("bytecnn.batch_speedup_vs_torch", statistics.median(a / b for a, b in zip(ours, theirs)))


@pytest.mark.gate
def test_bytecnn_file_sizes(benchmark, gate, nano):
    benchmark.group = "bytecnn"
    size = benchmark(lambda: nano["paths"]["auto"].stat().st_size)
    sizes = {s: p.stat().st_size for s, p in nano["paths"].items()}
    import wordfreq

    dictionary = (Path(wordfreq.__file__).parent / "data" / "large_en.msgpack.gz").stat().st_size
    _info(benchmark, nano, fp32_bytes=sizes["fp32"], wordfreq_large_en_bytes=dictionary, dictionary_ratio=dictionary / size)
    gate("bytecnn.nano_file_bytes", size)
    gate("bytecnn.dictionary_over_model", dictionary / size)


@pytest.mark.gate
def test_bytecnn_quality_and_jabberwocky_protocol(benchmark, gate, nano):
    """Test Spearman three ways and the Jabberwocky Protocol, through edgekit.runtime on the default export."""
    benchmark.group = "bytecnn"
    from edgekit.train import wordfreq_data as wd

    scorer = nano["scorer"]
    data = wd.load_words(limit=load_checkpoint(nano["ckpt"]).config.get("tokens"))
    split = wd.split_indices(data)
    ranks = benchmark.pedantic(wd.rank_report, args=(scorer.score, data, split), rounds=1, iterations=1)
    jab = wd.jabberwocky(scorer.score, data, split)
    _info(benchmark, nano, test_spearman=ranks["all"], stratified_spearman=ranks["stratified"],
          top50k_spearman=ranks["top50k"], jabberwocky_words_passed=jab["words_passed"],
          failed=[r["word"] for r in jab["rows"] if not r["pass"]])
    gate("bytecnn.nano_test_spearman", ranks["all"])
    gate("bytecnn.nano_stratified_spearman", ranks["stratified"])
    gate("bytecnn.nano_protocol_words_passed", jab["words_passed"])
    gate("bytecnn.nano_protocol_mean_slack", jab["nonsense_mean"] - (jab["rare_mean"] - jab["margin"]))
