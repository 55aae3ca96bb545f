"""Input handling shared by the vector families' runtimes (seqae, amn): numpy only.

    arr = load_npy("x.npy", dim=384)                       # float32, finite, last axis 384
"""
from __future__ import annotations

import os

import numpy as np

from edgekit.errors import UsageError


def check_vectors(arr, *, dim: int, name: str = "vectors") -> np.ndarray:
    """float32 array whose last axis is ``dim``, every value finite."""
    a = np.asarray(arr)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise UsageError(f"{name} must be a numeric array; got dtype {a.dtype}")
    a = a.astype(np.float32, copy=False)
    if a.ndim < 1 or a.shape[-1] != dim:
        raise UsageError(f"{name} must have {dim} values on the last axis; got shape {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise UsageError(f"{name} contain NaN or infinite values")
    return a


def load_npy(path: str, *, dim: int) -> np.ndarray:
    """A .npy file of vectors (no pickles), checked like ``check_vectors``."""
    if not os.path.isfile(path):
        raise UsageError(f"{path!r} is not a file")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UsageError(f"{path} is not a readable .npy array ({str(e).splitlines()[0][:120]})") from None
    if isinstance(arr, np.lib.npyio.NpzFile):
        raise UsageError(f"{path} is an .npz archive; save one array with numpy.save")
    return check_vectors(arr, dim=dim, name=f"{path}: vectors")


MAX_EMBEDDING_INPUTS = 256  # sequences in one /v1/embeddings request


def embeddings_route(embed, *, dim: int, what: str):
    """An `edgekit serve` handler in OpenAI's embeddings shape over ``embed(list of (T, dim) arrays) -> (B, E)``.

    The body's ``input`` is one (T, dim) array of ``what`` (a list of lists of numbers) or a list of them
    (these files carry no vocabulary, so text is turned into vectors outside the server)."""
    def handle(body: dict) -> dict:
        x = body.get("input")
        if not isinstance(x, list) or not x:
            raise UsageError(f"input must be a (T, {dim}) list of {what} or a list of them")
        seqs = [x] if isinstance(x[0], list) and x[0] and not isinstance(x[0][0], list) else x
        if len(seqs) > MAX_EMBEDDING_INPUTS:
            raise UsageError(f"input has {len(seqs)} sequences; at most {MAX_EMBEDDING_INPUTS} per request")
        arrays = []
        for i, s in enumerate(seqs):
            try:
                a = check_vectors(np.asarray(s, dtype=np.float32), dim=dim, name=f"input[{i}]")
            except (ValueError, TypeError):
                raise UsageError(f"input[{i}] must be a (T, {dim}) list of numbers") from None
            if a.ndim != 2 or len(a) == 0:
                raise UsageError(f"input[{i}] must be a (T, {dim}) list of {what}; got shape {tuple(a.shape)}")
            arrays.append(a)
        vectors = embed(arrays)
        n = sum(len(a) for a in arrays)
        return {"object": "list", "usage": {"prompt_tokens": n, "total_tokens": n},
                "data": [{"object": "embedding", "index": i, "embedding": v.astype(float).round(6).tolist()}
                         for i, v in enumerate(vectors)]}
    return handle
