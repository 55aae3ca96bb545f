"""Pronounceable non-words for bytecnn training: strings absent from the word list, target 1.0 (the rarest).

    fake = nonwords(data, split, 50_000, seed=0)                    # from the training split only
    fake, src = nonwords(data, split, 3000, seed=3, with_sources=True)  # src: the word each edit came from

Two generators: a byte 4-gram model over the training words, and one same-class letter swap of a
training word (home -> mome). Also importable from ``edgekit.train.wordfreq_data`` (where it began).
"""
from __future__ import annotations

import numpy as np

from edgekit.errors import DataError
from edgekit.train.wordfreq_data import (BANDS, Split, WordData, band_of, is_latin_word, is_protocol_word,
                                         listed_words, normalize_word)

# Non-words: every string absent from the frequency list has frequency zero, i.e. the rarest target.
NONWORD_ORDER = 3  # bytes of context of the n-gram model (a 4-gram model over training words)
NONWORD_EDIT_SHARE = 0.5  # share of non-words made by one same-class letter swap of a training word (home -> mome)
NONWORD_MIN_CHARS = 3
_VOWELS = np.frombuffer(b"aeiouy", dtype=np.uint8)
_CONSONANTS = np.frombuffer(b"bcdfghklmnprstw", dtype=np.uint8)  # common ones: swaps stay pronounceable


def _ngram_table(x: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Byte n-gram counts over (N, L) words: sorted context codes, their pair ranges, cumulative counts, next bytes."""
    n = len(x)
    p = np.concatenate([np.zeros((n, order), np.int64), x.astype(np.int64), np.zeros((n, 1), np.int64)], axis=1)
    pairs = []
    for t in range(order, p.shape[1]):
        live = p[:, t - 1] != 0 if t > order else np.ones(n, bool)  # stop after a word's end byte
        ctx = np.zeros(n, np.int64)
        for j in range(t - order, t):
            ctx = (ctx << 8) | p[:, j]
        pairs.append(((ctx << 8) | p[:, t])[live])
    codes, counts = np.unique(np.concatenate(pairs), return_counts=True)  # sorted by (context, next byte)
    ctx_of = codes >> 8
    ctx_codes, starts = np.unique(ctx_of, return_index=True)
    return ctx_codes, np.r_[starts, len(codes)], np.cumsum(counts).astype(np.float64), (codes & 0xFF).astype(np.uint8)


def _sample_ngram(table, rows: int, max_len: int, order: int, rng: np.random.Generator) -> list[bytes]:
    """Draw ``rows`` byte strings from the n-gram table, all at once; unfinished ones are dropped."""
    ctx_codes, bounds, cum, nxt = table
    ctx = np.zeros(rows, np.int64)
    out = np.zeros((rows, max_len), np.uint8)
    done = np.zeros(rows, bool)
    mask = (1 << (8 * order)) - 1
    for t in range(max_len + 1):
        g = np.searchsorted(ctx_codes, ctx)  # every context reached was seen in training
        lo, hi = bounds[g], bounds[g + 1]
        base = np.where(lo > 0, cum[lo - 1], 0.0)
        pick = np.searchsorted(cum, base + rng.random(rows) * (cum[hi - 1] - base), side="right")
        b = np.where(done, 0, nxt[np.minimum(pick, len(nxt) - 1)])
        done |= b == 0
        if t == max_len or done.all():
            break
        out[:, t] = b
        ctx = ((ctx << 8) | b) & mask
    return [bytes(r[r != 0]) for r in out[done]]


def _edit_words(words: list[str], rng: np.random.Generator) -> list[str | None]:
    """One ASCII letter of each word replaced by another of its class (vowel or consonant): home -> mome."""
    out: list[str | None] = []  # one entry per word (None: fewer than two ASCII letters to choose from)
    for w in words:
        b = bytearray(w.encode("utf-8"))
        pos = [i for i, c in enumerate(b) if 97 <= c <= 122]
        if len(pos) < 2:
            out.append(None)
            continue
        i = pos[int(rng.integers(len(pos)))]
        pool = _VOWELS if b[i] in _VOWELS else _CONSONANTS  # j, q, v, x, z swap in but never out of a word
        b[i] = int(pool[int(rng.integers(len(pool)))])
        out.append(b.decode("utf-8"))
    return out


def nonwords(data: WordData, split: Split, n: int, *, seed: int, edit_share: float = NONWORD_EDIT_SHARE,
             edit_top: int = 0, len_top: int = 0, max_len: int = 24, with_sources: bool = False):
    """``n`` pronounceable non-words made from the training split only, deterministic for a seed.

    ``1 - edit_share`` come from a byte 4-gram model over the training words, ``edit_share`` from one
    same-class letter swap of a training word (home -> mome) drawn evenly across ICF bands, or evenly
    from the ``edit_top`` most frequent training words when that is set (near-misses of common words).
    Each is kept
    only if it is absent from the whole source list (all of wordfreq's entries, not just the usable
    words), is not a protocol word or an inflection of one, has 3+ Latin letters, and is new.
    ``len_top``: the non-words take the length distribution (3+ letters) of the ``len_top`` most frequent
    words (short strings are the hard case) instead of the generators' own. ``with_sources``: also return,
    per non-word, the index (into ``data.words``) of the training word it was edited from, -1 for n-gram ones.
    """
    from edgekit.runtime.bytecnn import encode  # the runtime's byte encoding

    rng = np.random.default_rng([seed, 17])
    train = [data.words[i] for i in split.train]
    listed = listed_words(data)
    table = _ngram_table(encode(train, max_len=max_len), NONWORD_ORDER)
    band = band_of(data.icf[split.train])
    weight = 1.0 / np.bincount(band, minlength=BANDS)[band]
    if edit_top:
        weight = (split.train < edit_top).astype(np.float64)  # split.train is sorted: most frequent first
    weight /= weight.sum()
    if len_top:  # edits keep their word's length: draw the words so lengths follow the top words'
        share = _length_share(data.words[:len_top], max_len)
        tlen = np.minimum(np.array([len(w) for w in train]), max_len)
        mass = np.bincount(tlen, weights=weight, minlength=max_len + 1)
        weight = weight * np.divide(share, mass, out=np.zeros_like(share), where=mass > 0)[tlen]
        weight /= weight.sum()
    n_edit = int(round(n * edit_share))
    want = {"ngram": n - n_edit, "edit": n_edit}
    cap = np.ceil(_length_share(data.words[:len_top], max_len) * want["ngram"]).astype(np.int64) if len_top else None
    per_len = np.zeros(max_len + 1, np.int64)  # n-gram non-words kept, by length
    seen: set[str] = set()
    made: dict[str, list[str]] = {"ngram": [], "edit": []}
    src: dict[str, list[int]] = {"ngram": [], "edit": []}
    for rnd in range(50):  # rounds; each draws twice what is missing (many draws are real words)
        need = {k: want[k] - len(made[k]) for k in made}
        if max(need.values()) <= 0:
            break
        if rnd == 25 and need["edit"] > 0:  # few source words (edit_top) run out of new edits: n-gram ones fill in
            want = {"ngram": want["ngram"] + need["edit"], "edit": len(made["edit"])}
            need = {"ngram": need["ngram"] + need["edit"], "edit": 0}
        strict = cap is not None and rnd < 40  # the last rounds fill any shortfall with any length
        cands: dict[str, list[tuple[str, int]]] = {"ngram": [], "edit": []}
        if need["ngram"] > 0:  # short strings are a small share of the n-gram model's draws: draw more
            for raw in _sample_ngram(table, (8 if strict else 1) * 2 * need["ngram"] + 64, max_len, NONWORD_ORDER, rng):
                try:
                    cands["ngram"].append((raw.decode("utf-8"), -1))
                except UnicodeDecodeError:
                    continue
        if need["edit"] > 0:
            picks = rng.choice(len(train), size=2 * need["edit"] + 64, p=weight)
            cands["edit"] = [(w, int(split.train[i])) for w, i in zip(_edit_words([train[i] for i in picks], rng), picks)
                             if w is not None]
        for kind, words in cands.items():
            for w, origin in words:
                if len(made[kind]) >= want[kind]:
                    break
                if (w in seen or w in listed or len(w) < NONWORD_MIN_CHARS or not is_latin_word(w)
                        or is_protocol_word(w) or normalize_word(w) != w):
                    continue
                if kind == "ngram" and cap is not None:
                    k = min(len(w), max_len)
                    if strict and per_len[k] >= cap[k]:
                        continue
                    per_len[k] += 1
                seen.add(w)
                made[kind].append(w)
                src[kind].append(origin)
    out, origins = made["ngram"] + made["edit"], src["ngram"] + src["edit"]
    if len(out) < n:
        raise DataError(f"{data.source}: made only {len(out):,} of {n:,} non-words from {len(train):,} training "
                        "words; give more words or a lower nonwords share")
    order = rng.permutation(len(out))
    words = [out[i] for i in order]
    return (words, np.array([origins[i] for i in order], np.int64)) if with_sources else words


def _length_share(words: list[str], max_len: int) -> np.ndarray:
    """Share of ``words`` (3+ letters) with each length 0..max_len (longer ones count as max_len)."""
    lens = np.minimum(np.array([len(w) for w in words if len(w) >= NONWORD_MIN_CHARS], np.int64), max_len)
    return np.bincount(lens, minlength=max_len + 1) / max(len(lens), 1)
