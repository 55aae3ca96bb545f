"""AMN inference: the next sentence (concept) vector from the previous 5. numpy + onnxruntime.

    amn = edgekit.runtime.load("amn.onnx", threads=1)
    nxt = amn.predict_next(context)            # (T, 384), T >= 5: the last 5 are used -> (384,)
    nxt = amn.predict_next(batch)              # (B, T, 384) -> (B, 384)

Graph contract: input ``context`` (B, ctx, 384) float32, output ``next`` (B, 384). Vectors are
all-MiniLM-L6-v2 sentence embeddings; the encoder (90 MB) is not in the model file, so inputs are
vectors: ``python -m edgekit.train.vectors sentences "TEXT" -o ctx.npy`` makes them.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edgekit.errors import UsageError
from edgekit.runtime.modelcard import ModelCard
from edgekit.runtime.vectors import check_vectors


class AMNModel:
    """A loaded next-concept-vector predictor."""

    family = "amn"

    def __init__(self, sess: ort.InferenceSession, card: ModelCard, *, path: str = "", threads: int | None = None):
        self.session = sess
        self.card = card
        self.path = path
        self.threads = threads
        self.dim = card.config["dim"]
        self.ctx = card.config["ctx"]

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


def load(sess: ort.InferenceSession, card: ModelCard, *, path: str = "", threads: int | None = None) -> AMNModel:
    return AMNModel(sess, card, path=path, threads=threads)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity over the last axis."""
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-8)


def summarize(model: AMNModel, x: np.ndarray) -> dict:
    """The predicted next vector of each document in a (T, D) or (B, T, D) context, as lists (what
    `edgekit infer` shows): shape, next (B, D), cosine_to_last (B,), cosine_to_context_mean (B,)."""
    pred = np.atleast_2d(model.predict_next(x))
    ctx = np.atleast_3d(x) if x.ndim == 3 else x[None]
    return {"shape": list(x.shape), "next": pred.round(6).tolist(),
            "cosine_to_last": cosine(pred, ctx[:, -1]).round(6).tolist(),
            "cosine_to_context_mean": cosine(pred, ctx[:, -model.ctx:].mean(1)).round(6).tolist()}


def bench_metrics(model: AMNModel, path: str) -> dict:
    """`edgekit bench` hook: the unbudgeted p50 of one predict_next (file_bytes, amn's size budget, is
    measured for every family by bench_model)."""
    from edgekit.runtime.bench import p50_us

    ctx = np.random.default_rng(0).standard_normal((model.ctx, 384)).astype(np.float32)
    return {"predict_next_p50_us": p50_us(lambda: model.predict_next(ctx))}


def bench_workload(model: AMNModel) -> int:
    """What a fresh process runs before `edgekit bench` reads its peak memory: one next-vector prediction."""
    model.predict_next(np.zeros((model.ctx, model.dim), dtype=np.float32))
    return 1


def weight_group(name: str) -> str:
    """`edgekit inspect` hook: the size breakdown has one group."""
    return "weights"


def serve_routes(model: AMNModel) -> dict:
    """`edgekit serve` hook: POST routes -> handler(body) -> JSON object; the predicted next sentence vector
    of each context as an OpenAI embedding."""
    from edgekit.runtime.vectors import embeddings_route

    return {"/v1/embeddings": embeddings_route(lambda xs: np.stack([model.predict_next(x) for x in xs]),
                                               dim=model.dim, what="sentence vectors")}
