"""Atomic file writes: a temporary file in the target's folder, fsync, then rename.

    with atomic_path("runs/p3/phase3.onnx") as tmp:
        write_something(tmp)          # a crash or kill here leaves the old target untouched

Readers never see a half-written file, and a failed write (full disk, killed process) leaves
any previous file in place.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from edgekit.errors import EdgekitError


def check_writable_target(path: str | os.PathLike, *, inputs: tuple = ()) -> Path:
    """Fail early, before any work, when ``path`` cannot be written or would overwrite an input."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise EdgekitError(f"output folder {str(parent)!r} does not exist; create it or pick another path")
    if not os.access(parent, os.W_OK):
        raise EdgekitError(f"output folder {str(parent)!r} is not writable")
    if path.is_dir():
        raise EdgekitError(f"output path {str(path)!r} is a folder; give a file name")
    for inp in inputs:
        if inp is not None and Path(inp).exists() and path.exists() and os.path.samefile(path, inp):
            raise EdgekitError(f"output path {str(path)!r} is the input file; choose another with -o")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success rename it over ``path``, else remove it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EROFS, errno.EPERM):
            raise EdgekitError(f"could not write {str(path)!r}: {e.strerror}; the previous file is unchanged") from e
        raise
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _remove(p) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(p)
