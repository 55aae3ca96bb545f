"""Word-rarity scoring with an exported bytecnn model, numpy and onnxruntime only.

    scorer = edgekit.runtime.load("nano.onnx", threads=1)
    scorer.score(["the", "brillig"])      # array([0.03, 0.97], dtype=float32): 0 = very common, 1 = very rare
    scorer.score_one("bandersnatch")      # one word, lowest latency (pre-allocated input, IOBinding)

Words are normalized as in training (NFC, case-folded, curly apostrophe straightened), encoded as
UTF-8 bytes, cut or zero-padded to the model's ``max_len``. ``score`` runs in chunks of
``BATCH`` words so any list fits in memory.
"""
from __future__ import annotations

import unicodedata
from typing import Iterable

import numpy as np
import onnxruntime as ort

from edgekit.errors import ModelFileError, UsageError
from edgekit.runtime.modelcard import ModelCard

BATCH = 4096  # words per onnxruntime call in score(); larger batches gain nothing on CPU


def normalize(word: str) -> str:
    """The form the model reads, in training too: NFC, case-folded, curly apostrophe straightened (as wordfreq)."""
    return unicodedata.normalize("NFC", word.strip()).casefold().replace("\u2019", "'")


def check_word(word, where: str) -> str:
    """The normalized word, or a UsageError naming ``where`` for non-text, empty or multi-word input."""
    if not isinstance(word, str):
        raise UsageError(f"{where}: words must be strings; got {type(word).__name__}")
    w = normalize(word)
    if not w:
        raise UsageError(f"{where}: empty word; give words of at least one character")
    if any(ch.isspace() for ch in w):
        raise UsageError(f"{where}: {word!r} contains whitespace; give one word per argument or line")
    return w


def encode(words: list[str], *, max_len: int) -> np.ndarray:
    """(B, max_len) int64 UTF-8 bytes of (already normalized) words: numpy cuts at max_len and pads with 0."""
    raw = np.array([w.encode("utf-8") for w in words], dtype=f"S{max_len}")
    return raw.view(np.uint8).reshape(len(words), max_len).astype(np.int64)


class WordScorer:
    """An onnxruntime session over ``bytes`` (batch, max_len) int64 -> ``score`` (batch,) float32."""

    family = "bytecnn"

    def __init__(self, sess: ort.InferenceSession, card: ModelCard, *, path: str = "", threads: int | None = None):
        self.sess, self.card, self.path, self.threads = sess, card, path, threads
        self.max_len = card.family_fields.get("max_len") or card.config.get("max_len")
        if not (isinstance(self.max_len, int) and self.max_len > 0):
            raise ModelFileError(f"{path}: edgekit metadata 'max_len' must be a positive integer; got {self.max_len!r}")
        ins, outs = sess.get_inputs(), sess.get_outputs()
        if [i.name for i in ins] != ["bytes"] or [o.name for o in outs] != ["score"]:
            raise ModelFileError(f"{path}: a bytecnn file's graph maps 'bytes' to 'score'; this one takes "
                                 f"{[i.name for i in ins][:4]} (not a bytecnn export)")
        width = ins[0].shape[1] if len(ins[0].shape) == 2 else None
        if len(ins[0].shape) != 2 or (isinstance(width, int) and width != self.max_len):
            raise ModelFileError(f"{path}: metadata says max_len {self.max_len} but the graph reads {ins[0].shape}")
        self._input = ins[0].name
        self._output = outs[0].name
        # score_one writes into this buffer in place; IOBinding keeps onnxruntime from re-wrapping it per call
        self._one = np.zeros((1, self.max_len), dtype=np.int64)
        self._binding = sess.io_binding()
        self._binding.bind_cpu_input(self._input, self._one)
        self._out_one = np.zeros((1,), dtype=np.float32)
        self._binding.bind_output(self._output, "cpu", 0, np.float32, [1], self._out_one.ctypes.data)

    def encode(self, words: list[str], *, normalized: bool = False) -> np.ndarray:
        """(B, max_len) int64 UTF-8 bytes of the words (normalized here unless already), 0-padded."""
        return encode(words if normalized else [normalize(w) for w in words], max_len=self.max_len)

    def score(self, words: Iterable[str]) -> np.ndarray:
        """Rarity scores (float32, 0 = very common, 1 = very rare) for a list of words, batched."""
        words = [check_word(w, f"word {i}") for i, w in enumerate(words)]
        out = np.empty(len(words), dtype=np.float32)
        for i in range(0, len(words), BATCH):
            x = self.encode(words[i:i + BATCH], normalized=True)
            out[i:i + len(x)] = self.sess.run([self._output], {self._input: x})[0]
        return out

    def score_one(self, word: str) -> float:
        """One word's score with the least overhead: bytes copied into a bound, pre-allocated buffer.

        Not thread-safe (one buffer per scorer): threads share ``score``, or each loads its own scorer.
        """
        b = check_word(word, "word").encode("utf-8")[: self.max_len]
        one = self._one
        one.fill(0)
        one[0, : len(b)] = np.frombuffer(b, dtype=np.uint8)
        self.sess.run_with_iobinding(self._binding)
        return float(self._out_one[0])

    def __repr__(self) -> str:
        q = self.card.quantization.scheme
        return f"WordScorer({self.path!r}, max_len={self.max_len}, quantization={q})"


def load(sess: ort.InferenceSession, card: ModelCard, *, path: str = "", threads: int | None = None) -> WordScorer:
    return WordScorer(sess, card, path=path, threads=threads)


def bench_metrics(model: WordScorer, path: str) -> dict:
    """`edgekit bench` hook: single_word_p50_us (the notes' < 0.1 ms a word; a budget key) and the
    unbudgeted batch throughput over 5,000 generated words."""
    import time

    from edgekit.runtime.bench import p50_us

    words = [f"w{i}ord{i % 97}" for i in range(5000)]
    model.score(words)
    t = time.perf_counter()
    model.score(words)
    return {"single_word_p50_us": p50_us(lambda: model.score_one("bandersnatch"), calls=2000),
            "batch_words_per_s": len(words) / (time.perf_counter() - t)}


def bench_workload(model: WordScorer) -> int:
    """What a fresh process runs before `edgekit bench` reads its peak memory: one word scored."""
    model.score_one("bandersnatch")
    return 1


def weight_group(name: str) -> str:
    """`edgekit inspect` hook: the size breakdown has one group (a small CNN)."""
    return "weights"


MAX_SERVED_WORDS = 10_000  # words in one /v1/word_scores request


def serve_routes(model: WordScorer) -> dict:
    """`edgekit serve` hook: ``POST /v1/word_scores`` {"input": ["word", ...]} -> {"data": [{"word", "score"}]}."""
    def scores(body: dict) -> dict:
        words = body.get("input")
        words = [words] if isinstance(words, str) else words
        if not isinstance(words, list) or not words or len(words) > MAX_SERVED_WORDS:
            raise UsageError(f"input must be a word or a list of 1 to {MAX_SERVED_WORDS:,} words")
        s = model.score(words)
        return {"object": "list", "data": [{"word": w, "score": round(float(v), 6)} for w, v in zip(words, s)]}
    return {"/v1/word_scores": scores}
