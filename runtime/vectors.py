"""Input handling shared by the vector families' runtimes (seqae, amn): numpy only.

    arr = load_npy("x.npy", dim=384)                       # float32, finite, last axis 384
    reject_generation_options(opts, family="seqae")        # --max-new-tokens & co. do not apply
"""
from __future__ import annotations

import os

import numpy as np

from edgekit.errors import UsageError

GENERATION_OPTIONS = ("max_new_tokens", "temperature", "top_k", "top_p", "stop", "no_heal", "window", "repeat_penalty", "repeat_last_n")


def reject_generation_options(opts: dict, *, family: str) -> None:
    """GPT's generation options mean nothing for vector models: say so instead of ignoring them."""
    given = [f"--{k.replace('_', '-')}" for k in GENERATION_OPTIONS if opts.get(k) not in (None, [], (), "")]
    if given:
        raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to GPT models only; "
                         f"{family} models take vectors (.npy)")


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
