"""The benchmarks' answer checks can fail: swap in a wrong answer and each check the benchmarks run raises.

Uses the same trained model, runtime and PyTorch reference as benchmarks/test_gpt.py; only the runtime's
output is replaced (monkeypatched) by a wrong one.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from edgekit.runtime.modelcard import ModelCard

from checks import AnswerError, check_same_tokens, check_schemes, check_top_k, check_vectors
from test_gpt import NEW_TOKENS, decode_side_by_side, first_token_side_by_side, pair  # noqa: F401 (fixture)

pytestmark = pytest.mark.gate


def _shifted(run):
    """A runtime that returns its tokens shifted by one position (right count, wrong answer)."""

    def wrong(prompts, opts):
        gens = run(prompts, opts)
        return [dataclasses.replace(g, token_ids=g.token_ids[1:] + g.token_ids[:1]) if len(g.token_ids) > 1
                else dataclasses.replace(g, token_ids=[(g.token_ids[0] + 1) % 576]) for g in gens]

    return wrong


def test_decode_benchmark_passes_the_real_runtime_and_fails_a_shifted_one(pair, monkeypatch):
    model, lm, ids, _ = pair
    tokens, agree, _, _ = decode_side_by_side(model, lm, ids, rounds=1)  # the real answer passes
    assert len(tokens) == NEW_TOKENS and agree >= 0.95
    monkeypatch.setattr(lm, "run", _shifted(lm.run))
    with pytest.raises(AnswerError, match="greedy agreement with PyTorch"):
        decode_side_by_side(model, lm, ids, rounds=1)
    with pytest.raises(AnswerError, match="greedy agreement with PyTorch"):
        first_token_side_by_side(model, lm, ids, rounds=1)


def test_decode_benchmark_fails_a_runtime_that_stops_early(pair, monkeypatch):
    model, lm, ids, _ = pair
    run = lm.run
    monkeypatch.setattr(lm, "run", lambda p, o: [dataclasses.replace(g, token_ids=g.token_ids[:-1]) for g in run(p, o)])
    with pytest.raises(AnswerError, match="returned 47 tokens"):
        decode_side_by_side(model, lm, ids, rounds=1)


def test_sampled_check_fails_on_tokens_outside_pytorchs_top_k(pair):
    """The sampled gate's answer: seeded top-k 40 tokens are all in PyTorch's top 40; the same tokens moved
    half the vocabulary away are not."""
    from edgekit.runtime.gpt import SamplingOptions

    model, lm, ids, _ = pair
    opts = SamplingOptions(max_new_tokens=NEW_TOKENS, heal=False, temperature=0.8, top_k=40, seed=1)
    tokens = lm.run([ids], opts)[0].token_ids
    assert check_top_k(model, ids, tokens, k=40, floor=0.95) >= 0.95
    moved = [(t + lm.vocab_size // 2) % lm.vocab_size for t in tokens]
    with pytest.raises(AnswerError, match="top 40"):
        check_top_k(model, ids, moved, k=40, floor=0.95)


def test_thread_check_fails_on_different_tokens():
    check_same_tokens([1, 2, 3], [1, 2, 3])
    with pytest.raises(AnswerError, match="from position 1"):
        check_same_tokens([1, 2, 3], [1, 3, 2])


def test_vector_check_fails_on_a_drift_of_the_tolerance():
    ref = np.random.default_rng(0).standard_normal((17, 384)).astype(np.float32) * 0.05
    check_vectors(ref + 0.009, ref, atol=0.01, what="amn")
    with pytest.raises(AnswerError, match="max \\|runtime - PyTorch\\|"):
        check_vectors(ref + 0.011, ref, atol=0.01, what="amn")
    with pytest.raises(AnswerError, match="shape"):
        check_vectors(ref[1:], ref, atol=0.01, what="amn")


def test_scheme_check_fails_on_an_accepted_scheme_outside_budget_or_an_unexplained_rejection(pair):
    lm = pair[1]
    assert check_schemes(lm.card)
    bad = lm.card.to_dict()
    step = next(s for s in bad["verification"]["steps"] if s["step"].startswith("quantize:") and s["ok"])
    step["parity"]["greedy_agreement"] = 0.90
    with pytest.raises(AnswerError, match="outside its budget"):
        check_schemes(ModelCard.from_dict(bad))
    bad = lm.card.to_dict()
    step = next(s for s in bad["verification"]["steps"] if s["step"].startswith("quantize:"))
    step["ok"], step["note"] = False, ""
    with pytest.raises(AnswerError):
        check_schemes(ModelCard.from_dict(bad))
