"""seqae inference: encode token-vector sequences to 16-d codes, or reconstruct them. numpy + onnxruntime.

    ae = edgekit.runtime.load("ae-attention.onnx", threads=1)
    code = ae.encode(x)                          # x (T, 384) -> (16,)
    codes = ae.encode(batch, lengths=[12, 7])     # (B, T, 384) zero-padded -> (B, 16)
    codes = ae.encode([x1, x2])                  # a list of (T_i, 384) arrays -> (2, 16)
    recon = ae.reconstruct(x)                    # same shape as the input

Graph contract: inputs ``vectors`` (B, T, 384) float32 and ``lengths`` (B,) int64; outputs
``reconstruction`` (B, T, 384) and ``code`` (B, 16). Padded positions of a reconstruction are zero.
Vectors are MiniLM's static token embeddings; the file carries no vocabulary, so text is turned into
vectors outside the runtime (``python -m edgekit.train.vectors tokens "TEXT" -o x.npy``).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from edgekit.errors import UsageError
from edgekit.runtime.modelcard import ModelCard
from edgekit.runtime.vectors import check_vectors


class SeqAEModel:
    """A loaded sequence autoencoder."""

    family = "seqae"

    def __init__(self, sess: ort.InferenceSession, card: ModelCard, *, path: str = "", threads: int | None = None):
        self.session = sess
        self.card = card
        self.path = path
        self.threads = threads
        self.dim = card.config["input_dim"]
        self.bottleneck = card.config["bottleneck"]

    def _batch(self, vectors, lengths) -> tuple[np.ndarray, np.ndarray, str]:
        """(B, T, D) float32, lengths (B,) int64 and the input's form: "one", "batch" or "list"."""
        if isinstance(vectors, (list, tuple)):
            seqs = [check_vectors(v, dim=self.dim) for v in vectors]
            if not seqs or any(s.ndim != 2 or len(s) == 0 for s in seqs):
                raise UsageError(f"give a non-empty list of (T, {self.dim}) arrays with T >= 1")
            lengths = np.array([len(s) for s in seqs], dtype=np.int64)
            x = np.zeros((len(seqs), int(lengths.max()), self.dim), dtype=np.float32)
            for i, s in enumerate(seqs):
                x[i, :len(s)] = s
            return x, lengths, "list"
        x = check_vectors(vectors, dim=self.dim)
        if x.ndim == 2:
            if lengths is not None:
                raise UsageError("lengths apply to a (B, T, D) batch; a single (T, D) sequence has none")
            x, form = x[None], "one"
        elif x.ndim == 3:
            form = "batch"
        else:
            raise UsageError(f"vectors must be (T, {self.dim}) or (B, T, {self.dim}); got shape {tuple(x.shape)}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise UsageError(f"vectors must hold at least one sequence of one token; got shape {tuple(x.shape)}")
        if lengths is None:
            lengths = np.full(x.shape[0], x.shape[1], dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if len(lengths) != x.shape[0] or lengths.min() < 1 or lengths.max() > x.shape[1]:
            raise UsageError(f"lengths must give 1..{x.shape[1]} for each of the {x.shape[0]} sequences; "
                             f"got {lengths.tolist()}")
        return np.ascontiguousarray(x), lengths, form

    def _run(self, vectors, lengths, outputs: list[str]):
        x, lengths, form = self._batch(vectors, lengths)
        return self.session.run(outputs, {"vectors": x, "lengths": lengths}), x, lengths, form

    def encode(self, vectors, lengths=None) -> np.ndarray:
        """Codes: (16,) for one (T, D) sequence, (B, 16) for a batch or a list."""
        (code,), _, _, form = self._run(vectors, lengths, ["code"])
        return code[0] if form == "one" else code

    def reconstruct(self, vectors, lengths=None):
        """Reconstructions shaped like the input: (T, D), (B, T, D) zero past each length, or a list."""
        (recon,), x, lengths, form = self._run(vectors, lengths, ["reconstruction"])
        recon = recon * (np.arange(x.shape[1])[None, :, None] < lengths[:, None, None])
        if form == "one":
            return recon[0]
        return [recon[i, :n] for i, n in enumerate(lengths)] if form == "list" else recon

    def similarity(self, vectors, lengths=None) -> dict[str, np.ndarray]:
        """Per sequence: mean token cosine of input and reconstruction, and cosine of their mean vectors."""
        (recon,), x, lengths, _ = self._run(vectors, lengths, ["reconstruction"])
        mask = np.arange(x.shape[1])[None, :] < lengths[:, None]  # (B, T)
        cos = (recon * x).sum(-1) / (np.linalg.norm(recon, axis=-1) * np.linalg.norm(x, axis=-1) + 1e-8)
        m = mask[..., None]
        mr, mx = (recon * m).sum(1), (x * m).sum(1)
        seq = (mr * mx).sum(-1) / (np.linalg.norm(mr, axis=-1) * np.linalg.norm(mx, axis=-1) + 1e-8)
        return {"token_cosine": (cos * mask).sum(1) / mask.sum(1), "sequence_cosine": seq}


def load(sess: ort.InferenceSession, card: ModelCard, *, path: str = "", threads: int | None = None) -> SeqAEModel:
    return SeqAEModel(sess, card, path=path, threads=threads)


def lengths_from_padding(x: np.ndarray) -> np.ndarray | None:
    """A (B, T, D) .npy marks padding with all-zero vectors at the end of each row."""
    if x.ndim != 3:
        return None
    real = np.abs(x).sum(-1) > 0  # (B, T)
    lengths = np.where(real.any(1), x.shape[1] - np.argmax(real[:, ::-1], axis=1), 0)
    if lengths.min() < 1:
        raise UsageError("a sequence in the batch is all zeros (padding only); remove it")
    return lengths.astype(np.int64)


def summarize(model: SeqAEModel, x: np.ndarray) -> dict:
    """Codes and reconstruction quality of a (T, D) sequence or a zero-padded (B, T, D) batch, as lists
    (what `edgekit infer` shows): shape, code (B, 16), token_cosine (B,), sequence_cosine (B,)."""
    lengths = lengths_from_padding(x)
    codes = model.encode(x, lengths)
    sim = model.similarity(x, lengths)
    return {"shape": list(x.shape), "code": np.atleast_2d(codes).round(6).tolist(),
            "token_cosine": sim["token_cosine"].round(6).tolist(),
            "sequence_cosine": sim["sequence_cosine"].round(6).tolist()}


def bench_metrics(model: SeqAEModel, path: str) -> dict:
    """`edgekit bench` hook: ``<preset>_file_bytes`` (the budget key for ae-baseline / ae-attention) and the
    unbudgeted p50 of reconstructing one 17-vector sequence."""
    import os

    from edgekit.runtime.bench import p50_us

    x = np.random.default_rng(0).standard_normal((17, model.dim)).astype(np.float32)
    out = {"reconstruct_p50_us": p50_us(lambda: model.reconstruct(x))}
    preset = model.card.family_fields.get("preset") or ""
    if preset.startswith("ae-"):
        out[f"{preset[3:]}_file_bytes"] = os.path.getsize(path)
    return out


def bench_workload(model: SeqAEModel) -> int:
    """What a fresh process runs before `edgekit bench` reads its peak memory: one 17-vector sequence."""
    model.reconstruct(np.zeros((17, model.dim), dtype=np.float32))
    return 1


def weight_group(name: str) -> str:
    """`edgekit inspect` hook: the size breakdown has one group."""
    return "weights"


def serve_routes(model: SeqAEModel) -> dict:
    """`edgekit serve` hook: POST routes -> handler(body) -> JSON object; the codes as OpenAI embeddings."""
    from edgekit.runtime.vectors import embeddings_route

    return {"/v1/embeddings": embeddings_route(model.encode, dim=model.dim, what="MiniLM token vectors")}
