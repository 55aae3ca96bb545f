"""The answer checks every benchmark runs beside its timing, as plain functions so a mutation test
(benchmarks/test_mutation.py) can feed them wrong answers and see them fail.

Each takes the thing measured and an independent reference computed in the same test (PyTorch on the
same checkpoint, or the 1-thread output) and raises AnswerError naming what differs.
"""
from __future__ import annotations

import numpy as np
import torch


class AnswerError(AssertionError):
    """A benchmark's measured run gave a wrong answer: the timing does not count."""


def teacher_forced_logits(model, prompt_ids: list[int], tokens: list[int]) -> torch.Tensor:
    """PyTorch's logits for each of ``tokens`` given the same prefix (prompt + the runtime's own earlier
    tokens), (len(tokens), V), in one forward pass."""
    seq = torch.tensor([list(prompt_ids) + list(tokens)], dtype=torch.int64)
    with torch.inference_mode():
        logits, _ = model(seq[:, :-1])
    return logits[0, len(prompt_ids) - 1:]


def torch_greedy_agreement(model, prompt_ids: list[int], tokens: list[int]) -> float:
    """Fraction of ``tokens`` that equal PyTorch's argmax given the same prefix, teacher forced:
    free-running divergence after one near-tie does not count against every later token, a wrong token
    at any position does."""
    want = teacher_forced_logits(model, prompt_ids, tokens).argmax(-1).tolist()
    return float(np.mean([a == b for a, b in zip(tokens, want)])) if tokens else 0.0


def check_decode(model, prompt_ids: list[int], tokens: list[int], *, expected: int, floor: float) -> float:
    """The runtime's greedy tokens: the count asked for, and PyTorch agrees on at least ``floor`` of them."""
    if len(tokens) != expected:
        raise AnswerError(f"decode returned {len(tokens)} tokens, asked for {expected}")
    agree = torch_greedy_agreement(model, prompt_ids, tokens)
    if agree < floor:
        raise AnswerError(f"greedy agreement with PyTorch {agree:.3f} < {floor} over {expected} tokens")
    return agree


def check_same_tokens(one: list[int], two: list[int], *, what: str = "2 threads") -> None:
    """Two runs that must decode the same tokens: 2 threads vs 1 (greedy is deterministic), or two
    sampled runs with the same seed."""
    if list(one) != list(two):
        first = next((i for i, (a, b) in enumerate(zip(one, two)) if a != b), min(len(one), len(two)))
        raise AnswerError(f"{what}: different tokens from position {first}")


def check_top_k(model, prompt_ids: list[int], tokens: list[int], *, k: int, floor: float) -> float:
    """Sampled tokens (top-k sampling): at least ``floor`` of them are among PyTorch's k most likely
    tokens given the same prefix. Returns that fraction."""
    if not tokens:
        raise AnswerError("sampling returned no tokens")
    top = teacher_forced_logits(model, prompt_ids, tokens).topk(k, dim=-1).indices.tolist()
    share = float(np.mean([t in row for t, row in zip(tokens, top)]))
    if share < floor:
        raise AnswerError(f"only {share:.3f} of sampled tokens are in PyTorch's top {k} (floor {floor})")
    return share


def check_vectors(ours: np.ndarray, ref: np.ndarray, *, atol: float, what: str) -> float:
    """Runtime vectors against PyTorch's on the same input: same shape, max |difference| <= atol."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    if ours.shape != ref.shape:
        raise AnswerError(f"{what}: shape {ours.shape} != PyTorch's {ref.shape}")
    diff = float(np.abs(ours - ref).max())
    if not diff <= atol:
        raise AnswerError(f"{what}: max |runtime - PyTorch| {diff:.3g} > {atol:g}")
    return diff


def check_schemes(card) -> dict:
    """Every scheme the export tried either holds the export's quality budget on the report half of the
    held-out data or was rejected with its reason recorded (and is not the file's scheme).
    Returns {scheme: figures} of the accepted ones."""
    ver = card.verification
    budgets = ver["budgets"]
    chosen = card.quantization.scheme
    accepted = {}
    for s in ver["steps"]:
        if not s["step"].startswith("quantize:"):
            continue
        scheme, p = s["step"].split(":", 1)[1], s["parity"]
        if s["ok"]:
            if p["val_loss_delta_pct"] > budgets["val_loss_delta_pct"] or p["greedy_agreement"] < budgets["greedy_agreement"]:
                raise AnswerError(f"{scheme} accepted but outside its budget on the report half: {p}")
            accepted[scheme] = p
        elif not s.get("note") or scheme == chosen:
            raise AnswerError(f"{scheme} failed its budget without a recorded reason, or was chosen anyway")
    if chosen != "fp32" and chosen not in accepted:
        raise AnswerError(f"the file's scheme {chosen} is not among the accepted ones {sorted(accepted)}")
    return accepted
