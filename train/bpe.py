"""Byte-level BPE vocabularies of any size, trained with the `tokenizers` library, run by tiktoken.

    ranks = train_bpe(texts, vocab_size=576)       # {token bytes: rank}, 256 bytes + merges
    spec = bpe_spec(ranks, name="edgekit-bpe-576")  # goes into checkpoints and model files
    tok = from_spec(spec)                            # a tiktoken Encoding; <|endoftext|> is the last id

The trainer is Hugging Face's BPE trainer over GPT-2's pre-tokenization regex and byte alphabet.
Its merges, in order, become tiktoken ranks after the 256 single bytes: that is how GPT-2's own
vocab.bpe maps onto tiktoken, so encoding with tiktoken reproduces the trained BPE.
"""
from __future__ import annotations

from edgekit.errors import TokenizerError
from edgekit.runtime.tokenizer import GPT2_PAT_STR, bpe_spec, from_spec  # noqa: F401  (re-exported)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode stand-ins for bytes (the ByteLevel alphabet), inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def train_bpe(texts, *, vocab_size: int) -> dict[bytes, int]:
    """Train a byte-level BPE with ``vocab_size`` ids in all: 256 bytes, merges, and <|endoftext|>."""
    if vocab_size < 258:
        raise TokenizerError(f"BPE vocabulary size must be at least 258 (256 bytes + 1 merge + end-of-text); got {vocab_size}")
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT2_PAT_STR), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer=trainer)
    import json

    merges = json.loads(tok.to_str())["model"]["merges"]
    dec = _byte_decoder()
    ranks = {bytes([b]): b for b in range(256)}
    for m in merges:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        token = bytes(dec[c] for c in a) + bytes(dec[c] for c in b)
        if token not in ranks:
            ranks[token] = len(ranks)
    return ranks
