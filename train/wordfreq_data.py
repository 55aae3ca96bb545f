"""Word-frequency data for the bytecnn family: words, ICF targets, a hashed split, bands, the Jabberwocky Protocol.

    data = load_words()                          # wordfreq's large English list (offline), ~300k words
    data = load_words("freq.tsv", limit=50_000)  # or a word<TAB>frequency file, most frequent first after sorting
    split = split_indices(data)                  # train / val / test by a hash of each word: fixed forever
    rho = spearman(model_scores, data.icf[split.test])
    ranks = rank_report(score_fn, data, split)   # Spearman on all, Zipf-band-stratified and top-50k test words
    table = jabberwocky(score_fn, data)          # the Jabberwocky Protocol, per word pass/fail
    fake = nonwords(data, split, 50_000, seed=0)  # pronounceable non-words (train/nonwords.py, re-exported)

The target is the normalized inverse corpus frequency (ICF) of the notes:
``icf = (log f_max - log f) / (log f_max - log f_min)`` over the chosen words, 0 = the most frequent
word, 1 = the rarest. It is scale-free, so counts and probabilities in a TSV give the same target.
Torch-free (numpy and wordfreq only), so export and the benchmarks can rebuild the held-out words.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.errors import DataError
from edgekit.runtime.bytecnn import normalize as normalize_word  # one definition for training and inference

# --- the Jabberwocky Protocol --------------------------------------------------------------------
# Nonsense words from Carroll's poem (1871). Several now appear in wordfreq's large list because the
# poem is quoted online (brillig at Zipf 1.06, chortled 1.83, beamish 2.18); they stay in the
# protocol, are removed from every split (with their inflections), and their real Zipf frequency
# is reported beside their score.
JABBERWOCKY = (
    "brillig", "slithy", "toves", "gimble", "wabe", "mimsy", "borogoves", "mome", "raths", "outgrabe",
    "jubjub", "frumious", "bandersnatch", "vorpal", "manxome", "tumtum", "uffish", "whiffling", "tulgey",
    "burbled", "galumphing", "beamish", "frabjous", "callooh", "callay", "chortled",
)
# Our own pseudo-words: English phonotactics, absent from wordfreq's large English list (a test checks).
INVENTED = (
    "glorpish", "snarkled", "flumbering", "plonderish", "quobbly", "trundlewick", "mizzering", "blunket",
    "scrandy", "fendlow", "trobbled", "splotter", "snoffle", "glimberous",
)
PROTOCOL_WORDS = JABBERWOCKY + INVENTED
PROTOCOL_TOP_N = 1000  # the reference: the 1,000 most frequent words of the data
PROTOCOL_PERCENTILE = 0.90  # each nonsense word must score rarer than this share of the top-N words
RARE_ICF = 0.80  # "real rare words": held-out (test) words in the rarest ICF band, [0.8, 1]
# The nonsense words' mean score may sit at most this far below the rare words' mean: half the width
# of the rare band, so the nonsense mean still lands among rare words (0.1 ICF = 0.67 Zipf units, a
# factor of 4.7 in frequency, on wordfreq's 1.01-7.73 Zipf range).
PROTOCOL_MARGIN = 0.10

SPLIT_SALT = b"edgekit-bytecnn-split-v1"
SPLIT_PERCENT = {"test": 10, "val": 10}  # the rest is train
BANDS = 10  # equal-width ICF bands for stratified sampling and reports

# Rank quality where it matters: the same number of held-out (test) words from each Zipf band of the
# top 100k, so "the" and "brillig" weigh alike. Bands are one Zipf unit wide; the top one merges
# Zipf >= 5 (5-6, 6-7, 7+: only 125 test words together) and the bottom one takes the top 100k's
# tail below Zipf 3 (down to 1.94). The figure is the mean over STRATIFIED_DRAWS fixed samples
# (STRATIFIED_SEED, whatever the model's seed): one sample of 575 words varies by about +-0.02.
STRATIFIED_TOP = 100_000
STRATIFIED_PER_BAND = 150
STRATIFIED_DRAWS = 10
STRATIFIED_ZIPF_EDGES = (3.0, 4.0, 5.0)  # band 0: Zipf < 3, 1: [3, 4), 2: [4, 5), 3: >= 5
STRATIFIED_SEED = 0
TOP_50K = 50_000



@dataclass(frozen=True)
class WordData:
    words: list[str]  # most frequent first (ties broken alphabetically)
    freq: np.ndarray  # (N,) float64 frequency as given (wordfreq: share of all tokens)
    icf: np.ndarray  # (N,) float32 normalized inverse corpus frequency in [0, 1]
    log_fmax: float  # natural log of the highest frequency (icf 0)
    log_fmin: float  # natural log of the lowest frequency (icf 1)
    source: str  # "wordfreq:en:large" or the TSV path
    excluded: tuple[str, ...] = ()  # protocol words (and inflections) removed from the data

    def __len__(self) -> int:
        return len(self.words)

    def recipe(self) -> dict:
        """What rebuilds these exact words (stored in checkpoints and model files)."""
        return {"source": self.source, "words": len(self.words), "log_fmax": self.log_fmax,
                "log_fmin": self.log_fmin, "split_salt": SPLIT_SALT.decode(), "split_percent": SPLIT_PERCENT}


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # indices into WordData.words
    val: np.ndarray
    test: np.ndarray


# --- pure helpers ---------------------------------------------------------------------------------
_ASCII_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def is_latin_word(word: str) -> bool:
    """Latin letters (accents allowed) with optional inner apostrophes: "don't", "café"; not "u.s", "00"."""
    if _ASCII_WORD.fullmatch(word):  # fast path for almost every word
        return True
    if not word or word[0] == "'" or word[-1] == "'" or "''" in word:
        return False
    for ch in word:
        if ch == "'":
            continue
        if not ch.isalpha() or (not ch.isascii() and not unicodedata.name(ch, "").startswith("LATIN")):
            return False
    return True


def _stem(word: str) -> str:
    for suffix in ("ings", "ing", "ed", "es", "s", "ish", "ly", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 5:
            return word[: -len(suffix)]
    return word


# stems of 5+ letters also catch inflections (chortle, chortles, galumph); shorter ones match exactly
_PROTOCOL_STEMS = frozenset(s for s in (_stem(w) for w in PROTOCOL_WORDS) if len(s) >= 5)


def is_protocol_word(word: str) -> bool:
    """A protocol word or an inflection of one (chortle, chortles, galumph): kept out of every split."""
    return word in PROTOCOL_WORDS or _stem(word) in _PROTOCOL_STEMS


def split_of(word: str) -> str:
    """'train', 'val' or 'test' from a salted hash of the word: independent of list order, seed and size."""
    bucket = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8, key=SPLIT_SALT).digest(), "big") % 100
    if bucket < SPLIT_PERCENT["test"]:
        return "test"
    if bucket < SPLIT_PERCENT["test"] + SPLIT_PERCENT["val"]:
        return "val"
    return "train"


def band_of(icf: np.ndarray, bands: int = BANDS) -> np.ndarray:
    """Equal-width ICF band per word, 0 (most frequent) .. bands-1 (rarest)."""
    return np.minimum((np.asarray(icf) * bands).astype(np.int64), bands - 1)


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (scipy.stats.rankdata's default), without scipy."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation with tie correction (Pearson on average ranks)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"spearman needs two equal-length arrays of 2+ values; got {a.size} and {b.size}")
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def _read_tsv(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist; give a word<TAB>frequency .tsv file")
    out: dict[str, float] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}); give a word<TAB>frequency .tsv file") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"{path}:{n}: expected 'word<TAB>frequency', got {line[:60]!r}")
        word, raw = normalize_word(parts[0]), parts[1].strip()
        try:
            f = float(raw)
        except ValueError:
            raise DataError(f"{path}:{n}: frequency {raw!r} is not a number") from None
        if not math.isfinite(f) or f <= 0:
            raise DataError(f"{path}:{n}: frequency must be a positive finite number; got {raw!r}")
        if not word:
            raise DataError(f"{path}:{n}: empty word")
        out[word] = out.get(word, 0.0) + f  # case variants merge, as wordfreq does
    return out


@functools.lru_cache(maxsize=1)
def _wordfreq_dict() -> dict[str, float]:
    try:
        import wordfreq
    except ImportError:
        raise DataError("the wordfreq package is needed for the default data; install edgekit[all] "
                        "or give --data word<TAB>frequency.tsv") from None
    return wordfreq.get_frequency_dict("en", wordlist="large")


def listed_words(data: "WordData") -> frozenset[str]:
    """Every entry of the source list (all scripts, protocol words included): what counts as a word."""
    if data.source.startswith("wordfreq:"):
        return _wordfreq_keys()
    return frozenset(_read_tsv(Path(data.source)))


@functools.lru_cache(maxsize=1)
def _wordfreq_keys() -> frozenset[str]:
    return frozenset(_wordfreq_dict())


# --- public API -----------------------------------------------------------------------------------
def load_words(path: str | os.PathLike | None = None, *, limit: int | None = None) -> WordData:
    """Latin-letter words with frequencies, most frequent first, protocol words removed; ICF targets.

    ``limit`` keeps the ``limit`` most frequent words (the ICF range is then that of the kept words).
    """
    source = "wordfreq:en:large" if path is None else str(path)
    raw = _wordfreq_dict() if path is None else _read_tsv(Path(path))
    items, excluded = [], []
    cap = len(raw) if limit is None else max(int(limit), 0)
    for w, f in sorted(raw.items(), key=lambda wf: (-wf[1], wf[0])):
        if len(items) == cap:
            break
        if is_protocol_word(w):
            excluded.append(w)
        elif is_latin_word(w):
            items.append((w, f))
    if len(items) < 20:
        raise DataError(f"{source}: only {len(items)} usable words (Latin letters, optional inner "
                        "apostrophes); need at least 20 for a train/val/test split")
    words = [w for w, _ in items]
    freq = np.array([f for _, f in items], dtype=np.float64)
    log_f = np.log(freq)
    hi, lo = float(log_f.max()), float(log_f.min())
    if hi - lo <= 0:
        raise DataError(f"{source}: every word has the same frequency; the rarity target would be constant")
    icf = ((hi - log_f) / (hi - lo)).astype(np.float32)
    return WordData(words, freq, icf, hi, lo, source, tuple(sorted(excluded)))


def split_indices(data: WordData) -> Split:
    """Deterministic held-out split by word hash (10% test, 10% val, 80% train)."""
    parts = np.array([split_of(w) for w in data.words])
    return Split(*(np.flatnonzero(parts == name) for name in ("train", "val", "test")))


def jabberwocky(score: Callable[[list[str]], np.ndarray], data: WordData, split: Split | None = None) -> dict:
    """Run the Jabberwocky Protocol: per-word scores, percentile vs the top-N words, pass/fail.

    A word passes when it scores rarer than ``PROTOCOL_PERCENTILE`` of the ``PROTOCOL_TOP_N`` most
    frequent words; the protocol also needs the nonsense mean >= rare-word mean - ``PROTOCOL_MARGIN``,
    the rare words being held-out test words with ICF >= ``RARE_ICF``.
    """
    split = split or split_indices(data)
    top = np.asarray(score(data.words[:PROTOCOL_TOP_N]), dtype=np.float64)
    rare_idx = split.test[data.icf[split.test] >= RARE_ICF]
    rare = np.asarray(score([data.words[i] for i in rare_idx]), dtype=np.float64) if len(rare_idx) else np.array([])
    jab = np.asarray(score(list(PROTOCOL_WORDS)), dtype=np.float64)
    real = _real_zipf(PROTOCOL_WORDS) if data.source.startswith("wordfreq:") else {}
    rows = []
    for w, s in zip(PROTOCOL_WORDS, jab):
        pct = float((top < s).mean())
        rows.append({"word": w, "score": float(s), "percentile_vs_top": pct, "pass": pct >= PROTOCOL_PERCENTILE,
                     "source": "carroll" if w in JABBERWOCKY else "invented", "wordfreq_zipf": real.get(w, 0.0)})
    rare_mean = float(rare.mean()) if rare.size else float("nan")
    mean_ok = bool(rare.size) and float(jab.mean()) >= rare_mean - PROTOCOL_MARGIN
    return {"rows": rows, "words_passed": sum(r["pass"] for r in rows), "words": len(rows),
            "nonsense_mean": float(jab.mean()), "rare_mean": rare_mean, "rare_words": int(rare.size),
            "margin": PROTOCOL_MARGIN, "mean_ok": mean_ok, "top_mean": float(top.mean()),
            "passed": mean_ok and all(r["pass"] for r in rows)}


def _real_zipf(words) -> dict[str, float]:
    try:
        import wordfreq
    except ImportError:
        return {}
    return {w: float(wordfreq.zipf_frequency(w, "en", wordlist="large")) for w in words}


def zipf_bands(data: WordData, idx: np.ndarray) -> np.ndarray | None:
    """Stratification band of each word (0 = Zipf < 3 ... 3 = Zipf >= 5); None for non-wordfreq data."""
    if not data.source.startswith("wordfreq:"):
        return None
    zipf = np.log10(data.freq[idx]) + 9.0  # wordfreq frequencies are shares of all tokens
    return np.searchsorted(np.asarray(STRATIFIED_ZIPF_EDGES), zipf, side="right")


def stratified_samples(data: WordData, split: Split, *, per_band: int = STRATIFIED_PER_BAND,
                       top: int = STRATIFIED_TOP, draws: int = STRATIFIED_DRAWS) -> list[np.ndarray] | None:
    """``draws`` fixed samples of up to ``per_band`` test words from each Zipf band of the ``top`` words."""
    cand = split.test[split.test < top]
    bands = zipf_bands(data, cand)
    if bands is None:
        return None
    rng = np.random.default_rng(STRATIFIED_SEED)
    return [np.sort(np.concatenate([rng.permutation(cand[bands == b])[:per_band]
                                    for b in range(len(STRATIFIED_ZIPF_EDGES) + 1)])) for _ in range(draws)]


def rank_report(score: Callable[[list[str]], np.ndarray], data: WordData, split: Split | None = None) -> dict:
    """Test-split Spearman three ways: all words, Zipf-band-stratified (top 100k), top 50k."""
    split = split or split_indices(data)
    scores = np.asarray(score([data.words[i] for i in split.test]), dtype=np.float64)
    out = {"all": spearman(scores, data.icf[split.test]), "all_words": int(len(split.test))}
    top = split.test < TOP_50K  # split.test is sorted, as are the words (most frequent first)
    out["top50k"] = spearman(scores[top], data.icf[split.test[top]]) if top.sum() > 1 else None
    out["top50k_words"] = int(top.sum())
    samples = stratified_samples(data, split)
    if samples is not None and len(samples[0]) > 1:
        rhos = [spearman(scores[np.searchsorted(split.test, idx)], data.icf[idx]) for idx in samples]
        out["stratified"], out["stratified_std"] = float(np.mean(rhos)), float(np.std(rhos))
        out["stratified_words"] = np.bincount(zipf_bands(data, samples[0]),
                                              minlength=len(STRATIFIED_ZIPF_EDGES) + 1).tolist()
    else:
        out["stratified"], out["stratified_std"], out["stratified_words"] = None, None, []
    return out


# The non-word generator lives in train/nonwords.py; its names stay importable from here.
_NONWORD_NAMES = frozenset({"NONWORD_ORDER", "NONWORD_EDIT_SHARE", "NONWORD_MIN_CHARS", "nonwords"})


def __getattr__(name: str):
    if name in _NONWORD_NAMES:
        from edgekit.train import nonwords as _nonwords

        return getattr(_nonwords, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
