"""Tokenizer parity: the offline GPT-2 encoding against known ids and an independent BPE implementation."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.runtime.tokenizer import _gpt2_files, from_spec, gpt2_encoding
from edgekit.train.data import read_split_texts


def test_gpt2_known_ids():
    tok = from_spec({"kind": "gpt2"})
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert tok.n_vocab == 50257 and tok.eot_id == 50256
    assert tok.encode("<|endoftext|>") != [50256]  # special-token text is plain text


def test_gpt2_matches_huggingface_bpe_on_stdlib_sample():
    """Another GPT-2 BPE implementation (HF tokenizers) built from the same encoder.json/vocab.bpe."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab_bpe, encoder_json = _gpt2_files()
    vocab = json.load(open(encoder_json, encoding="utf-8"))
    merges = [tuple(line.split()) for line in open(vocab_bpe, encoding="utf-8").read().split("\n")[1:] if line]
    hf = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    train, _, _ = read_split_texts(None)
    sample = "".join(train[::40])[:200_000]
    ours = gpt2_encoding().encode_ordinary(sample)
    assert ours == hf.encode(sample).ids
    assert len(ours) > 40_000


def test_bpe_trainer_writes_tiktoken_ranks_of_requested_size():
    from edgekit.train.bpe import bpe_spec, train_bpe

    train, _, _ = read_split_texts(None)
    ranks = train_bpe(train[:60], vocab_size=300)
    tok = from_spec(bpe_spec(ranks, name="t"))
    assert tok.n_vocab == 300 and tok.eot_id == 299
    text = "def get_value(self):\n    return self.x  # ünïcode ✓"
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("def return self")) < len("def return self")  # merges learned something


def test_bpe_spec_survives_json_roundtrip():
    from edgekit.train.bpe import bpe_spec, train_bpe

    spec = bpe_spec(train_bpe(["aaaa bbbb aaaa bbbb"] * 20, vocab_size=260), name="t")
    again = from_spec(json.loads(json.dumps(spec)))
    assert again.encode("aaaa bbbb") == from_spec(spec).encode("aaaa bbbb")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_gpt2_roundtrip_arbitrary_text(text):
    tok = from_spec({"kind": "gpt2"})
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=120))
def test_stream_decoder_reassembles_multibyte_text(text):
    tok = from_spec({"kind": "gpt2"})
    dec = tok.stream_decoder()
    pieces = [dec.push(t) for t in tok.encode(text)] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text


def test_char_tokenizer_rejects_unknown_characters():
    from edgekit.errors import TokenizerError

    tok = from_spec({"kind": "char", "itos": list("abc \n")})
    assert tok.decode(tok.encode("cab a")) == "cab a"
    with pytest.raises(TokenizerError, match="not in this model"):
        tok.encode("xyz")
