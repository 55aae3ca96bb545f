"""Real vectors for seqae and amn: text extraction, deterministic splits, MiniLM token and sentence vectors."""
from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import DataError
from edgekit.train import vectors

# all-MiniLM-L6-v2 through sentence-transformers 6.2.0 (computed once, offline): the first six values
# of the embedding of this sentence. edgekit's own BERT forward must reproduce them.
REFERENCE_SENTENCE = "Open the file and return a stream."
REFERENCE_VALUES = [0.06765, 0.03375, -0.11715, -0.02366, 0.07073, 0.01335]


def test_split_sentences_keeps_prose_drops_code():
    text = ("Return the sum of the numbers. It raises an error when empty!\n\n"
            ">>> add(1, 2)\n3\n\n    x = compute(y)  # indented code\n\n"
            "Heading\n=======\n\nShort one.\n\nThe result is cached for later calls.")
    assert vectors.split_sentences(text) == [
        "Return the sum of the numbers.", "It raises an error when empty!", "The result is cached for later calls."]


def test_builtin_corpora_are_real_and_deterministic():
    std, doc = vectors.documents("stdlib"), vectors.documents("pydoc")
    assert len(std) > 300 and sum(len(d.sentences) for d in std) > 10_000
    assert len(doc) > 50 and any(d.id == "topic:with" for d in doc)
    assert any(d.id == "json/__init__.py" for d in std)
    counts = {s: sum(vectors.split_of(d.key) == s for d in std) for s in vectors.SPLITS}
    assert 0.7 < counts["train"] / len(std) < 0.9 and counts["val"] > 20 and counts["test"] > 20
    assert vectors.split_of("a fixed text") == vectors.split_of("a fixed text")


def test_token_sequences_deterministic_capped_and_disjoint():
    a = vectors.token_sequences("stdlib", max_len=16, cap=200)
    b = vectors.token_sequences("stdlib", max_len=16, cap=200)
    assert [s.tolist() for s in a["test"]] == [s.tolist() for s in b["test"]]
    assert 200 <= len(a["train"]) <= 215 and len(a["val"]) >= 25 and len(a["test"]) >= 25
    assert all(4 <= len(s) <= 16 for split in a.values() for s in split)
    train = {tuple(s) for s in a["train"]}
    assert not train & {tuple(s) for s in a["test"]}


def test_token_vectors_are_minilm_static_embeddings():
    table = vectors.token_table()
    assert table.shape == (30522, 384) and table.dtype == np.float32
    assert vectors.token_ids("hello world").tolist() == [7592, 2088]  # BERT uncased WordPiece ids
    x, lengths = vectors.token_batch([np.array([7592, 2088]), np.array([7592])])
    assert x.shape == (2, 2, 384) and lengths.tolist() == [2, 1]
    np.testing.assert_array_equal(x[0, 1], table[2088])
    assert not x[1, 1].any()  # padding is zeros


def test_sentence_vectors_match_sentence_transformers_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path))
    sents = [REFERENCE_SENTENCE, "Open a file for reading and give back a file object.", "The weather was lovely."]
    v = vectors.encode_sentences(sents)
    assert v.shape == (3, 384)
    np.testing.assert_allclose(v[0, :6], REFERENCE_VALUES, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3  # paraphrase closer than an unrelated sentence
    assert len(list(tmp_path.glob("minilm-sentences-*.npy"))) == 1
    monkeypatch.setattr(vectors, "_bert_mean_pooled", lambda *a: pytest.fail("cache was not used"))
    np.testing.assert_array_equal(vectors.encode_sentences(sents), v)


def test_concept_windows_are_consecutive_sentence_vectors():
    w = vectors.concept_windows("stdlib", ctx=5, cap=6)
    X, Y = w["train"]
    assert X.shape[1:] == (5, 384) and len(X) == len(Y) > 50 and len(w["val"][0]) and len(w["test"][0])
    np.testing.assert_array_equal(X[1, :4], X[0, 1:])  # a window slides by one sentence
    np.testing.assert_array_equal(X[1, 4], Y[0])
    ood = vectors.concept_windows("pydoc", ctx=5, cap=6, all_splits=True)
    assert len(ood["train"][0]) == 0 and len(ood["test"][0]) > 50


def test_data_path_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("One sentence is here now. Another sentence follows it here.\n")
    (tmp_path / "b.py").write_text('"""A module docstring says what it does."""\n')
    docs = vectors.documents(str(tmp_path))
    assert [d.id for d in docs] == ["a.txt", "b.py"]
    assert docs[0].sentences == ("One sentence is here now.", "Another sentence follows it here.")
    with pytest.raises(DataError, match="does not exist"):
        vectors.documents(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no prose sentences"):
        vectors.documents(str(tmp_path / "empty"))
