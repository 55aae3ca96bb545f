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
