"""karpathy/nanoGPT's data layout: where its ``meta.pkl`` and ``val.bin`` live for a checkpoint.

    files = find_dataset("out-shakespeare-char/ckpt.pt", config)   # config = the checkpoint's 'config'
    files.meta, files.val_bin, files.train_bin                      # Paths or None
    ids = read_bin(files.val_bin)                                   # uint16 token ids, as prepare.py wrote

nanoGPT's train.py records ``config['dataset']`` and reads ``data/<dataset>/{train,val}.bin`` (uint16
token ids) and ``data/<dataset>/meta.pkl`` (character vocabularies) relative to the folder it runs in;
sample.py looks for ``data/<dataset>/meta.pkl`` the same way. edgekit looks there (the working folder)
and then beside each of the checkpoint's parent folders, so ``edgekit export out/ckpt.pt`` works from
the nanoGPT folder and from anywhere else.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import CheckpointError

PARENT_LEVELS = 4  # checkpoint folder and up to three more ancestors
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class DatasetFiles:
    dataset: str | None  # config['dataset'], or None when the checkpoint names none
    meta: Path | None  # data/<dataset>/meta.pkl, if found
    val_bin: Path | None  # data/<dataset>/val.bin, if found
    train_bin: Path | None  # data/<dataset>/train.bin, if found
    searched: list[Path] = field(default_factory=list)  # the data/<dataset> folders looked in, in order


def dataset_name(config: dict) -> str | None:
    """The dataset a nanoGPT checkpoint was trained on (``config['dataset']``), if it is a plain name."""
    name = config.get("dataset") if isinstance(config, dict) else None
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        return None
    return name


def candidate_folders(ckpt_path: str | Path, dataset: str, *, cwd: str | Path | None = None) -> list[Path]:
    """data/<dataset> under the working folder, then under the checkpoint's folder and its parents."""
    roots = [Path(cwd) if cwd is not None else Path.cwd()]
    parent = Path(ckpt_path).resolve().parent
    for _ in range(PARENT_LEVELS):
        roots.append(parent)
        if parent.parent == parent:
            break
        parent = parent.parent
    out: list[Path] = []
    for r in roots:
        d = (r / "data" / dataset).resolve()
        if d not in out:
            out.append(d)
    return out


def find_dataset(ckpt_path: str | Path, config: dict, *, cwd: str | Path | None = None) -> DatasetFiles:
    """Each file from the first folder (in search order) that has it."""
    name = dataset_name(config)
    if name is None:
        return DatasetFiles(None, None, None, None, [])
    folders = candidate_folders(ckpt_path, name, cwd=cwd)
    first = lambda fname: next((d / fname for d in folders if (d / fname).is_file()), None)  # noqa: E731
    return DatasetFiles(name, first("meta.pkl"), first("val.bin"), first("train.bin"), folders)


def read_bin(path: str | Path) -> np.ndarray:
    """A nanoGPT ``.bin`` file: raw uint16 token ids (prepare.py's ``np.array(ids, np.uint16).tofile``)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0 or size % 2:
        raise CheckpointError(f"{path} is not a nanoGPT token file (uint16 ids): {size} bytes")
    return np.fromfile(path, dtype=np.uint16)
