"""GPT sampling, numpy only: the options of one generation, llama.cpp's repetition penalty and the
numpy sampler that mirrors the exported Loop's in-graph sampler (export/gpt_graph.py).

    opts = SamplingOptions(max_new_tokens=32, temperature=0.8, top_k=40, seed=1)
    opts.validate(vocab)
    nxt = sample_next(penalize(logits, recent, 1.1), opts, rng.random(B))   # (B,) next ids

``edgekit.runtime.gpt`` re-exports every name here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.errors import UsageError

MAX_NEW_TOKENS_LIMIT = 100_000
WINDOWS = ("slide", "exact")

MIN_TEMPERATURE = 1e-3  # logits / T in float32 (the in-graph sampler's type) overflows for smaller T: use 0 for greedy


@dataclass(frozen=True)
class SamplingOptions:
    """The options of one generation (``GPTModel.run``); ``validate`` refuses bad values with a UsageError."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    heal: bool = True  # token healing: regenerate the prompt's last token so "import " can become "import sys"
    window: str = "slide"  # slide: re-encode the last 3/4 block when full (fast); exact: nanoGPT's crop every step
    repeat_penalty: float = 1.0  # llama.cpp's: logits of the last repeat_last_n tokens / penalty (if > 0) or * penalty; 1 = off
    repeat_last_n: int = 64  # how many recent context tokens (prompt included) the penalty looks at; llama.cpp's default

    def validate(self, vocab: int) -> None:
        if self.window not in WINDOWS:
            raise UsageError(f"window must be one of {', '.join(WINDOWS)}; got {self.window!r}")
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) \
                or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise UsageError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS_LIMIT:,}; got {self.max_new_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature <= 100)):
            raise UsageError(f"temperature must be 0 (greedy) or from {MIN_TEMPERATURE:g} to 100; got {self.temperature!r}")
        if self.top_k is not None and not (isinstance(self.top_k, int) and 1 <= self.top_k <= vocab):
            raise UsageError(f"top_k must be an integer from 1 to the vocabulary size {vocab}; got {self.top_k!r}")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise UsageError(f"top_p must be in (0, 1]; got {self.top_p!r}")
        if not (isinstance(self.repeat_penalty, (int, float)) and 0 < self.repeat_penalty <= 100
                and np.isfinite(self.repeat_penalty)):
            raise UsageError(f"repeat_penalty must be in (0, 100] (1 = off); got {self.repeat_penalty!r}")
        if not isinstance(self.repeat_last_n, int) or isinstance(self.repeat_last_n, bool) or self.repeat_last_n < 0:
            raise UsageError(f"repeat_last_n must be a non-negative integer (0 = off); got {self.repeat_last_n!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise UsageError("stop strings must be non-empty text")


def penalize(logits: np.ndarray, recent: np.ndarray, penalty: float) -> np.ndarray:
    """llama.cpp's repetition penalty on (B, V) logits for the (B, N) recent ids: a seen token's logit
    is divided by ``penalty`` when positive and multiplied otherwise, once however often it was seen."""
    if penalty == 1.0 or recent.shape[1] == 0:
        return logits
    out = logits.copy()
    seen = np.take_along_axis(logits, recent, axis=1)
    p = np.float32(penalty)
    np.put_along_axis(out, recent, np.where(seen > 0, seen / p, seen * p), axis=1)
    return out


def top_k_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """(B, k) ids of the k largest logits per row, by descending logit, ties to the lower id: what a stable
    argsort of -logits gives (and onnxruntime's TopK), in O(V) with argpartition instead of a full sort
    (a stable sort of 50k logits cost ~4 ms, most of a sampled first token on phase3)."""
    B, V = logits.shape
    if k >= V:
        return np.argsort(-logits, axis=-1, kind="stable")
    out = np.empty((B, k), dtype=np.int64)
    for b in range(B):
        row = logits[b]
        kth = row[np.argpartition(-row, k - 1)[k - 1]]  # the k-th largest value
        above = np.flatnonzero(row > kth)
        tied = np.flatnonzero(row == kth)[: k - len(above)]  # ties at the boundary: the lowest ids
        cand = np.concatenate([above, tied])
        out[b] = cand[np.lexsort((cand, -row[cand]))]
    return out


def sample_next(logits: np.ndarray, opts: SamplingOptions, u: np.ndarray) -> np.ndarray:
    """Next ids (B,) from logits (B, V) and one uniform per row: argmax, or temperature / top-k / top-p.

    With ``top_k`` this is the exported Loop's sampler in numpy (float32, the k survivors sorted by
    descending logit, ties to the lower id, inverse CDF over that order), so the first token and files
    without the in-graph sampler draw what the graph draws. Without ``top_k`` every id is a candidate
    and the inverse CDF runs over the vocabulary in id order (edgekit 0.2's sampler, unchanged).
    """
    if opts.temperature == 0:
        return logits.argmax(axis=-1)
    top_p = 1.0 if opts.top_p is None else opts.top_p
    if opts.top_k is not None:
        k = min(opts.top_k, logits.shape[-1])
        idx = top_k_ids(logits, k)  # (B, k)
        z = np.take_along_axis(logits, idx, axis=-1).astype(np.float32) / np.float32(opts.temperature)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        p = e / e.sum(axis=-1, keepdims=True)
        c = np.cumsum(p, axis=-1)
        q = np.where((c - p) < np.float32(top_p), p, np.float32(0))
        c2 = np.cumsum(q, axis=-1)
        thr = u.astype(np.float32)[:, None] * c2.max(axis=-1, keepdims=True)
        pick = np.minimum((c2 < thr).sum(axis=-1), k - 1)
        return np.take_along_axis(idx, pick[:, None], axis=-1)[:, 0]
    z = logits.astype(np.float64) / opts.temperature
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    if top_p < 1:
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, axis=-1)
        keep_sorted = (np.cumsum(sorted_p, axis=-1) - sorted_p) < top_p  # always keeps the top token
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    return (np.cumsum(p, axis=-1) < u.reshape(-1, 1)).sum(axis=-1).clip(max=p.shape[-1] - 1)
