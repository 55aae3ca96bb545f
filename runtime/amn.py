"""AMN inference: the next sentence (concept) vector from the previous 5. numpy + onnxruntime.

    amn = edgekit.runtime.load("amn.onnx", threads=1)
    nxt = amn.predict_next(context)            # (T, 384), T >= 5: the last 5 are used -> (384,)
    nxt = amn.predict_next(batch)              # (B, T, 384) -> (B, 384)

Graph contract: input ``context`` (B, ctx, 384) float32, output ``next`` (B, 384). Vectors are
all-MiniLM-L6-v2 sentence embeddings; the encoder (90 MB) is not in the model file, so inputs are
vectors: ``python -m edgekit.train.vectors sentences "TEXT" -o ctx.npy`` makes them.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort

from edgekit.errors import UsageError
from edgekit.runtime.vectors import check_vectors, load_npy, reject_generation_options

TEXT_HINT = ("amn models take sentence vectors, and the MiniLM encoder (90 MB) is not in the model file; make a "
             '.npy with `python -m edgekit.train.vectors sentences "TEXT" -o ctx.npy` (needs edgekit[all])')


class AMNModel:
    """A loaded next-concept-vector predictor."""

    family = "amn"

    def __init__(self, sess: ort.InferenceSession, meta: dict, *, path: str = "", threads: int | None = None):
        self.session = sess
        self.meta = meta
        self.path = path
        self.threads = threads
        self.dim = int(meta["config"]["dim"])
        self.ctx = int(meta["config"]["ctx"])

    def predict_next(self, context) -> np.ndarray:
        """(T, D) -> (D,), or (B, T, D) -> (B, D); T >= ctx and only the last ctx vectors are read."""
        x = check_vectors(context, dim=self.dim, name="context")
        if x.ndim not in (2, 3):
            raise UsageError(f"context must be (T, {self.dim}) or (B, T, {self.dim}); got shape {tuple(x.shape)}")
        one = x.ndim == 2
        x = x[None] if one else x
        if x.shape[1] < self.ctx or x.shape[0] == 0:
            raise UsageError(f"context needs at least {self.ctx} vectors per document; got shape {tuple(x.shape)}")
        (nxt,) = self.session.run(["next"], {"context": np.ascontiguousarray(x[:, -self.ctx:])})
        return nxt[0] if one else nxt


def load(sess: ort.InferenceSession, meta: dict, *, path: str = "", threads: int | None = None) -> AMNModel:
    return AMNModel(sess, meta, path=path, threads=threads)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-8)


def infer_cli(model: AMNModel, inputs: list[str], opts: dict) -> int:
    """`edgekit infer MODEL ctx.npy [...]`: the predicted next vector of each document."""
    reject_generation_options(opts, family="amn")
    if not inputs:
        raise UsageError(f"give one or more .npy files of (T, {model.dim}) or (B, T, {model.dim}) sentence vectors")
    results = []
    for item in inputs:
        if not item.endswith(".npy"):
            raise UsageError(f"{item!r} is not a .npy file; {TEXT_HINT}")
        x = load_npy(item, dim=model.dim)
        pred = np.atleast_2d(model.predict_next(x))
        ctx = np.atleast_3d(x) if x.ndim == 3 else x[None]
        results.append({"input": item, "shape": list(x.shape), "next": pred.round(6).tolist(),
                        "cosine_to_last": _cos(pred, ctx[:, -1]).round(6).tolist(),
                        "cosine_to_context_mean": _cos(pred, ctx[:, -model.ctx:].mean(1)).round(6).tolist()})
    if opts.get("json"):
        sys.stdout.write(json.dumps(results if len(results) > 1 else results[0]) + "\n")
        return 0
    for r in results:
        for i, v in enumerate(r["next"]):
            head = " ".join(f"{t:+.3f}" for t in v[:6])
            sys.stdout.write(f"{r['input']}[{i}]: next vector ({len(v)}-d, norm {np.linalg.norm(v):.3f}) {head} ...; "
                             f"cosine to last {r['cosine_to_last'][i]:.3f}, "
                             f"to context mean {r['cosine_to_context_mean'][i]:.3f}\n")
    return 0


def bench_metrics(model: AMNModel, path: str) -> dict:
    """`edgekit bench` hook: the unbudgeted p50 of one predict_next (file_bytes, amn's size budget, is
    measured for every family by bench_model)."""
    from edgekit.runtime.bench import p50_us

    ctx = np.random.default_rng(0).standard_normal((model.ctx, 384)).astype(np.float32)
    return {"predict_next_p50_us": p50_us(lambda: model.predict_next(ctx))}
