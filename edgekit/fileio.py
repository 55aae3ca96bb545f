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
import stat
import tempfile
from pathlib import Path

from edgekit.errors import EdgekitError


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def check_writable_target(path: str | os.PathLike, *, reads: tuple | list = (), inputs: tuple = ()) -> Path:
    """Fail early, before any work, when ``path`` cannot be written or would replace something it must not.

    Refused: a missing or unwritable folder; an existing path that is not a regular file (a folder, a device
    node such as /dev/null, a fifo, a socket); a path that resolves, through symbolic or hard links, to any
    file the command reads (``reads``: the checkpoint, --data, a discovered meta.pkl or val.bin, ...) or to
    a file inside a folder it reads. ``inputs`` is the older name of ``reads``."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise EdgekitError(f"output folder {str(parent)!r} does not exist; create it or pick another path")
    if not os.access(parent, os.W_OK):
        raise EdgekitError(f"output folder {str(parent)!r} is not writable")
    if path.is_dir():
        raise EdgekitError(f"output path {str(path)!r} is a folder; give a file name")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise EdgekitError(f"output path {str(path)!r} cannot be checked ({e.strerror})") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise EdgekitError(f"output path {str(path)!r} exists and is not a regular file (a device, fifo or socket); "
                           "give a new file name or an existing regular file")
    real = os.path.realpath(path)
    for inp in (*reads, *inputs):
        if inp is None:
            continue
        try:
            ist = os.stat(inp)
        except OSError:
            continue  # not there: the command reports it when it reads it
        same = os.path.realpath(inp) == real or (st is not None and _same_file(st, ist))
        within = stat.S_ISDIR(ist.st_mode) and st is not None and _inside(real, os.path.realpath(inp))
        if same or within:
            what = "inside the input folder" if within else "the input file"
            raise EdgekitError(f"output path {str(path)!r} is {what} {str(inp)!r} (this command reads it); "
                               "choose another with -o")
    return path


def check_output_folder(folder: str | os.PathLike, *, reads: tuple | list = ()) -> Path:
    """Fail early when ``folder`` (where a command writes several files) exists and is not a folder, or holds
    a file or folder the command reads (a later write there would replace or add to an input)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise EdgekitError(f"output {str(folder)!r} exists and is not a folder; choose a new or existing folder")
    real = os.path.realpath(folder)
    for inp in reads:
        if inp is not None and os.path.exists(inp) and _inside(os.path.realpath(inp), real):
            raise EdgekitError(f"output folder {str(folder)!r} holds {str(inp)!r}, which this command reads; "
                               "choose another output folder")
    return folder


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
