"""GPT sampling, numpy only: the options of one generation, llama.cpp's repetition penalty and the
numpy sampler that mirrors the exported Loop's in-graph sampler (export/gpt_graph.py).

    opts = SamplingOptions(max_new_tokens=32, temperature=0.8, top_k=40, seed=1)
    opts.validate(vocab)
    nxt = sample_next(penalize(logits, recent, 1.1), opts, rng.random(B))   # (B,) next ids

``edgekit.runtime.gpt`` re-exports every name here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

import numpy as np

from edgekit.errors import UsageError
from edgekit.limits import LIMITS

MAX_NEW_TOKENS_LIMIT = LIMITS.max_new_tokens  # edgekit/limits.py holds every documented limit
WINDOWS = ("slide", "exact")
MIN_TEMPERATURE = 1e-3  # logits / T in float32 (the in-graph sampler's type) overflows for smaller T: use 0 for greedy
# the repetition penalty's look-back: the context never holds more than block_size tokens (GPT-2's 1,024), so a
# larger window penalizes nothing more; the cap bounds the (B, N) int64 window the sampler carries (64 KiB a row)
REPEAT_LAST_N_LIMIT = LIMITS.repeat_last_n
MAX_STOPS, MAX_STOP_CHARS = 16, 256  # stop strings per generation and characters per stop string
SEED_LIMIT = LIMITS.seed  # numpy's generators take any non-negative integer; JSON clients send int64


class OptionError(UsageError):
    """A generation option out of range: ``option`` (the field), ``valid`` (what would be), ``value``."""

    def __init__(self, option: str, valid: str, value: Any):
        self.option, self.valid, self.value = option, valid, value
        super().__init__(f"{option} must be {valid}; got {value!r}")


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _opt(default, *, valid: str, check, help: str, http: str | None = None, flag: str | None = None):
    """One option's default, valid values (text and check(value, vocab)), help text, and its names in the
    front ends: ``http`` (the request body's key, default the field's name), ``flag`` (the CLI's)."""
    return field(default=default, metadata={"valid": valid, "check": check, "help": help, "http": http, "flag": flag})


@dataclass(frozen=True)
class SamplingOptions:
    """The options of one generation: the one place for their defaults, valid ranges and help text.

    ``edgekit infer``'s flags, the Python API's keyword arguments (``generate(prompt, **options)``) and
    ``edgekit serve``'s request body are all read from these fields (``cli_flags``, ``resolve``,
    ``http_names``); ``validate`` refuses bad values with an ``OptionError`` naming the option."""

    max_new_tokens: int = _opt(64, valid=f"an integer from 1 to {MAX_NEW_TOKENS_LIMIT:,}", http="max_tokens",
                               check=lambda v, V: _int(v) and 1 <= v <= MAX_NEW_TOKENS_LIMIT,
                               help="Tokens to generate at most.")
    temperature: float = _opt(0.0, valid=f"0 (greedy) or from {MIN_TEMPERATURE:g} to 100",
                              check=lambda v, V: _num(v) and (v == 0 or MIN_TEMPERATURE <= v <= 100),
                              help="0 = greedy; higher samples more freely.")
    top_k: int | None = _opt(None, valid="an integer from 1 to the vocabulary size {vocab}",
                             check=lambda v, V: v is None or (_int(v) and 1 <= v <= V),
                             help="Sample among the k most likely tokens (default: all).")
    top_p: float | None = _opt(None, valid="in (0, 1]", check=lambda v, V: v is None or (_num(v) and 0 < v <= 1),
                               help="Nucleus sampling: the smallest set of tokens whose probability reaches p.")
    seed: int | None = _opt(None, valid=f"an integer from 0 to {SEED_LIMIT}",
                            check=lambda v, V: v is None or (_int(v) and 0 <= v <= SEED_LIMIT),
                            help="Makes sampling repeatable.")
    stop: tuple[str, ...] = _opt((), valid=f"up to {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} characters",
                                 check=lambda v, V: isinstance(v, tuple) and len(v) <= MAX_STOPS and all(
                                     isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in v),
                                 help="Stop when this text appears (repeatable).")
    heal: bool = _opt(True, valid="true or false", check=lambda v, V: isinstance(v, bool), flag="--no-heal",
                      help="Token healing (on by default): regenerate the prompt's last token, so 'import ' can "
                           "become 'import sys'.")
    window: str = _opt("slide", valid="one of " + ", ".join(WINDOWS), check=lambda v, V: v in WINDOWS,
                       help="Past the block: slide (re-encode the last 3/4 block when full, fast) or exact (nanoGPT's "
                            "crop to the last block_size tokens every step; one prefill per token).")
    repeat_penalty: float = _opt(1.0, valid="in (0, 100] (1 = off)", check=lambda v, V: _num(v) and 0 < v <= 100,
                                 help="llama.cpp's repetition penalty on the last repeat_last_n tokens (1 = off, e.g. 1.1).")
    repeat_last_n: int = _opt(64, valid=f"an integer from 0 (off) to {REPEAT_LAST_N_LIMIT:,}",
                              check=lambda v, V: _int(v) and 0 <= v <= REPEAT_LAST_N_LIMIT,
                              help="Context tokens (prompt included) the repetition penalty looks back at.")

    def validate(self, vocab: int) -> None:
        """Raise an OptionError for the first field outside its valid values."""
        for f in fields(self):
            v = getattr(self, f.name)
            if not f.metadata["check"](v, vocab):
                raise OptionError(f.name, f.metadata["valid"].format(vocab=vocab), v)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def http_names(cls) -> dict[str, str]:
        """The request body's key -> field name (OpenAI's ``max_tokens`` is ``max_new_tokens``)."""
        return {f.metadata["http"] or f.name: f.name for f in fields(cls)}

    @classmethod
    def resolve(cls, given: Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None,
                base: "SamplingOptions | None" = None) -> "SamplingOptions":
        """Options from ``given`` (field names; None = not given) over ``defaults`` (a model file's
        ``generation`` defaults) over ``base`` (or the fields' defaults). ``stop`` may be one string or a
        list. Unknown names are refused; values are checked by ``validate``, not here."""
        known = cls.names()
        unknown = [k for k in given if k not in known]
        if unknown:
            raise UsageError(f"unknown generation option {unknown[0]!r}; known: {', '.join(known)}")
        values = {k: v for k, v in (defaults or {}).items() if k in known}
        values.update({k: v for k, v in given.items() if v is not None})
        if "stop" in values:
            s = values["stop"]
            values["stop"] = (s,) if isinstance(s, str) else tuple(s) if isinstance(s, (list, tuple)) else s
        return replace(base or cls(), **values)


def cli_flag(name: str) -> str:
    """The CLI flag of option ``name`` (``--top-k``; ``--no-heal`` for heal)."""
    f = next(f for f in fields(SamplingOptions) if f.name == name)
    return f.metadata["flag"] or "--" + name.replace("_", "-")


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
