"""GPT export, verification: held-out probes, the checks against PyTorch, the decode workload, the Loop check
and the data they run on.

    select, report = make_probes(model, val)   # choose on one half of the held-out tokens, report on the other
    figures = check(engine, select)            # max_abs_diff, val_loss_delta_pct, greedy_agreement
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np
import onnx
import torch
from torch.nn import functional as F

from edgekit.errors import ExportError
from edgekit.guard import safe_text
from edgekit.export import common
from edgekit.export.gpt_loop import wrap_loop
from edgekit.models.gpt import GPT
from edgekit.options import ExportOptions
from edgekit.runtime.gpt import GPTModel, SamplingOptions
from edgekit.train.checkpoint import Checkpoint

VAL_LOSS_DELTA_PCT = 1.0  # quantized: held-out loss may grow at most 1%
GREEDY_AGREEMENT = 0.95  # quantized: top-1 agreement with PyTorch, teacher forced

# ----- verification ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Probe:
    """Fixed held-out inputs every step is checked on."""

    windows: torch.Tensor  # (N, L) val token windows for loss and logits
    torch_logits: torch.Tensor  # (EXACT_WINDOWS, L, V) PyTorch's logits on the first windows (max_abs_diff)
    torch_loss: float
    prompts: torch.Tensor  # (M, p) prompt ids
    greedy: torch.Tensor  # (M, p + n) PyTorch greedy continuations


def make_probes(model: GPT, val: np.ndarray) -> tuple[Probe, Probe]:
    """Two probes on disjoint halves of the held-out tokens: ``select`` for the choices (int4's search,
    which schemes pass for auto), ``report`` for the figures written to the report and the file, so the
    reported figures are not the ones the choice was made on."""
    half = len(val) // 2
    return make_probe(model, val[:half]), make_probe(model, val[half:])


EXACT_WINDOWS = 2  # windows whose full logits are kept for max_abs_diff (2 x 64 x 50k floats: 26 MB, not 103)


def make_probe(model: GPT, val: np.ndarray, *, n_windows: int = 8) -> Probe:
    cfg = model.config
    L = min(cfg.block_size, 64, len(val) - 1)
    starts = np.linspace(0, len(val) - L - 1, n_windows).astype(int)
    windows = torch.from_numpy(np.stack([val[s:s + L + 1] for s in starts]).astype(np.int64))
    with torch.no_grad():
        nll, kept = 0.0, None
        for i in range(len(windows)):  # one window at a time: (L, V) logits, not (N, L, V)
            logits, _ = model(windows[i:i + 1, :-1])
            nll += F.cross_entropy(logits[0], windows[i, 1:], reduction="sum").item()
            kept = logits if kept is None else torch.cat([kept, logits]) if i < EXACT_WINDOWS else kept
        loss = nll / windows[:, 1:].numel()
        logits = kept
    p = min(8, cfg.block_size // 4)
    n = min(32, cfg.block_size - p)
    m = max(8, math.ceil(256 / n))  # at least 8 prompts and 256 compared tokens
    pstarts = np.linspace(0, len(val) - p - 1, m).astype(int)
    seqs = torch.from_numpy(np.stack([val[s:s + p] for s in pstarts]).astype(np.int64))
    with torch.no_grad():  # PyTorch's greedy continuation through its KV cache: linear in n, not quadratic
        mask = torch.ones_like(seqs)
        logits_last, past = model.forward_cached(seqs, mask, model.empty_cache(m))
        for _ in range(n):
            nxt = logits_last.argmax(-1, keepdim=True)
            seqs = torch.cat([seqs, nxt], dim=1)
            mask = torch.ones_like(seqs)
            logits_last, past = model.forward_cached(nxt, mask, past)
    return Probe(windows, logits, loss, seqs[:, :p], seqs)


def within_budget(f: dict) -> bool:
    return f["val_loss_delta_pct"] <= VAL_LOSS_DELTA_PCT and f["greedy_agreement"] >= GREEDY_AGREEMENT


def check(engine: GPTModel, probe: Probe) -> dict:
    """Max |logit diff|, held-out loss delta (%) and greedy agreement of the graph against PyTorch."""
    x = probe.windows[:, :-1].numpy()
    y = probe.windows[:, 1:].numpy()
    N, L = x.shape
    past = engine.empty_past(N)
    mask = np.zeros((N, 0), dtype=np.int64)
    max_diff, nll = 0.0, 0.0
    for t in range(L):
        mask = np.concatenate([mask, np.ones((N, 1), dtype=np.int64)], axis=1)
        logits, past = engine.step(x[:, t:t + 1].copy(), mask, past)
        ref = probe.torch_logits[:, t].numpy()
        max_diff = max(max_diff, float(np.abs(logits[: len(ref)] - ref).max()))
        z = logits.astype(np.float64)
        z = z - z.max(-1, keepdims=True)
        nll += float((np.log(np.exp(z).sum(-1)) - z[np.arange(N), y[:, t]]).sum())
    loss = nll / (N * L)
    # greedy agreement, teacher forced on PyTorch's continuation
    seqs = probe.greedy.numpy()
    p = probe.prompts.shape[1]
    M = seqs.shape[0]
    logits, past = engine.step(seqs[:, :p].copy(), np.ones((M, p), dtype=np.int64), engine.empty_past(M))
    agree = []
    for t in range(p, seqs.shape[1]):
        agree.append(logits.argmax(-1) == seqs[:, t])
        if t + 1 < seqs.shape[1]:
            logits, past = engine.step(seqs[:, t:t + 1].copy(), np.ones((M, t + 1), dtype=np.int64), past)
    return {"max_abs_diff": max_diff, "val_loss": loss,
            "val_loss_delta_pct": 100.0 * (loss - probe.torch_loss) / probe.torch_loss,
            "greedy_agreement": float(np.mean(agree))}


def loop_check(step: onnx.ModelProto, step_engine: GPTModel, probe: Probe, engine, eot: int | None,
               record) -> onnx.ModelProto:
    """Wrap the chosen graph in the generation Loop and prove it changes nothing: the same logits for
    a single step, the same greedy tokens (Loop-driven vs Python-driven) on every probe prompt, the
    in-graph sampler at top_k 1 equal to greedy, and sampled and penalized generations (seeded)
    equal to numpy's reference sampler (runtime.gpt.sample_next / penalize) driving single passes."""
    t0 = time.time()
    looped = wrap_loop(step, eot=eot)
    make = engine
    engine = make(looped)
    x = probe.windows[:4, :-1].numpy()
    a = step_engine.step(x, np.ones_like(x), step_engine.empty_past(len(x)))[0]
    b = engine.step(x, np.ones_like(x), engine.empty_past(len(x)))[0]
    diff = common.max_abs_diff(a, b)
    n = probe.greedy.shape[1] - probe.prompts.shape[1]
    prompts = probe.prompts.tolist()
    stepped = make(looped, fresh=True)
    stepped.loop = False  # the same file, one pass per call: the sampler runs in numpy
    figures = {"max_abs_diff": diff}
    checks = {"identical_greedy": (SamplingOptions(max_new_tokens=n, heal=False), step_engine),
              "top_k1_is_greedy": (SamplingOptions(max_new_tokens=n, heal=False, temperature=0.7, top_k=1, seed=0),
                                   None),
              "identical_sampled": (SamplingOptions(max_new_tokens=n, heal=False, temperature=0.8,
                                                    top_k=min(40, stepped.vocab_size), top_p=0.95, seed=1), stepped),
              "identical_penalized": (SamplingOptions(max_new_tokens=n, heal=False, repeat_penalty=1.3,
                                                      repeat_last_n=16), stepped)}
    greedy = [g.token_ids for g in step_engine.run(prompts, checks["identical_greedy"][0])]
    ok = diff == 0.0
    for name, (opts, reference) in checks.items():
        ref = greedy if reference is None else [g.token_ids for g in reference.run(prompts, opts)]
        same = [g.token_ids == r for g, r in zip(engine.run(prompts, opts), ref)]
        figures[name] = f"{sum(same)}/{len(same)}"
        ok = ok and all(same)
    record("loop", looped, t0, figures, ok, "" if ok else "the generation Loop changed the model's outputs")
    if not ok:
        raise ExportError("verification failed; nothing written: the generation Loop changed the outputs ("
                          + ", ".join(f"{k} {v}" for k, v in figures.items()) + ")")
    return looped


# ----- the pipeline ---------------------------------------------------------------------------------
class _Lenient:
    """A character tokenizer that skips (and counts) characters outside its vocabulary, for
    verification text the user did not choose: the stdlib has characters a nanoGPT model never saw."""

    def __init__(self, tok):
        self.tok, self.skipped = tok, 0
        self.eot_id, self.n_vocab = tok.eot_id, tok.n_vocab

    def encode(self, text: str) -> list[int]:
        stoi = self.tok.stoi
        ids = [stoi[c] for c in text if c in stoi]
        self.skipped += len(text) - len(ids)
        return ids


def _in_vocab(ids: np.ndarray, vocab: int) -> tuple[np.ndarray, int]:
    keep = ids < vocab
    return ids[keep].astype(np.int32), int((~keep).sum())


def verification_data(ckpt: Checkpoint, opts: ExportOptions, tok, block: int):
    """Held-out tokens, calibration tokens and where they came from, in this order: ``--data``;
    nanoGPT's ``data/<dataset>/val.bin`` (token ids, found like meta.pkl); the data recorded in an
    edgekit checkpoint; the Python standard library, with a warning. Characters or ids outside the
    vocabulary are skipped and counted, except in data the user named (an error there)."""
    import hashlib

    from edgekit.train.data import build_corpus
    from edgekit.train.nanogpt import read_bin

    files = ckpt.dataset
    # a path inside a checkpoint is a hint, never opened: only data the user names (--data) is read
    own = ckpt.config.get("data") if ckpt.source == "edgekit" else None
    own = own if isinstance(own, str) and own else None
    skipped, warning = 0, None
    if opts.data is not None:
        kind, name = "--data", os.path.basename(os.path.normpath(opts.data)) or "--data"
        corpus = build_corpus(tok, data=opts.data, tokens=200_000, min_tokens=block + 2)
        val, train = corpus.val, corpus.train
    elif files is not None and files.val_bin is not None:
        kind, name = "nanoGPT val.bin", f"data/{files.dataset}/val.bin"
        val, skipped = _in_vocab(read_bin(files.val_bin)[:200_000], tok.n_vocab)
        train = val
        if files.train_bin is not None:
            train, more = _in_vocab(read_bin(files.train_bin)[:200_000], tok.n_vocab)
            skipped += more
    else:
        kind, name = "Python standard library", "stdlib"
        lenient = _Lenient(tok) if tok.eot_id is None and hasattr(tok, "stoi") else tok
        corpus = build_corpus(lenient, data=None, tokens=200_000, min_tokens=block + 2)
        val, train = corpus.val, corpus.train
        skipped = getattr(lenient, "skipped", 0)
        why = (f"the checkpoint says it was trained on {safe_text(os.path.basename(os.path.normpath(own)), 80)!r} (a "
               "hint: paths from a file are not opened)" if own else
               f"no data/{files.dataset}/val.bin was found" if files is not None and files.dataset else
               "the checkpoint records no training data")
        warning = f"verifying on the Python standard library: {why}; pass --data to choose"
    if len(val) < block + 2:
        raise ExportError(f"verification data {name} has {len(val)} usable tokens; needs at least {block + 2}")
    info = {"source": kind, "name": name, "tokens": int(len(val)),
            "sha256": hashlib.sha256(np.ascontiguousarray(val, dtype=np.int32).tobytes()).hexdigest(),
            "skipped_out_of_vocabulary": skipped}
    if warning:
        info["warning"] = warning
    return val, train, info

