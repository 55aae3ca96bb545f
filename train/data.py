"""Text corpora for language models: the Python standard library's own source by default, offline.

    files = corpus_files(None)                  # deterministic list of stdlib .py files
    corpus = build_corpus(tok, data=None, tokens=15000)
    x, y = corpus.batch("train", batch_size=12, block_size=64, generator=g)

Train and val are split by file (a file's sha1 decides, so the split is stable as files come and go);
a single file is split 90/10 by position. ``tokens`` caps the dataset like the research notes' phases
(90% train, 10% val).
"""
from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgekit.errors import DataError

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class SourceFile:
    rel: str  # path relative to the corpus root, the split key
    path: Path


@dataclass
class Corpus:
    train: np.ndarray  # token ids, int32
    val: np.ndarray
    source: str  # where the text came from
    n_train_files: int
    n_val_files: int

    def batch(self, split: str, *, batch_size: int, block_size: int, generator: torch.Generator):
        """Random windows (nanoGPT's get_batch): x (B, T) and y shifted by one."""
        data = self.train if split == "train" else self.val
        hi = len(data) - block_size - 1
        if hi < 1:
            raise DataError(f"{split} split has {len(data)} tokens; needs more than block size {block_size} + 1")
        ix = torch.randint(hi, (batch_size,), generator=generator).numpy()
        x = np.stack([data[i:i + block_size] for i in ix])
        y = np.stack([data[i + 1:i + 1 + block_size] for i in ix])
        return torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64))


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_val(rel: str) -> bool:
    return hashlib.sha1(rel.encode("utf-8")).digest()[0] < int(256 * VAL_FRACTION)


def corpus_files(data: str | None) -> tuple[list[SourceFile], str]:
    """The files of a corpus in a deterministic order, and a description of the source."""
    if data is None:
        root = stdlib_root()
        files = [SourceFile(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*.py"))
                 if not SKIP_DIRS & set(p.relative_to(root).parts)]
        return files, f"Python {'.'.join(map(str, __import__('sys').version_info[:2]))} standard library ({root})"
    root = Path(data)
    if not root.exists():
        raise DataError(f"--data {data!r} does not exist; give a text file or a folder of text files")
    if root.is_file():
        return [SourceFile(root.name, root)], str(root)
    files = [SourceFile(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if not files:
        raise DataError(f"--data folder {data!r} has no files")
    return files, str(root)


def read_text(path: Path) -> str | None:
    """UTF-8 text, or None for binary or undecodable files."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if b"\x00" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_split_texts(data: str | None) -> tuple[list[str], list[str], str]:
    """(train texts, val texts, source); a single file is split 90/10 by position."""
    files, source = corpus_files(data)
    texts = [(f, read_text(f.path)) for f in files]
    readable = [(f, t) for f, t in texts if t]
    if not readable:
        skipped = sum(t is None for _, t in texts)
        raise DataError(f"--data {data!r} has no readable UTF-8 text ({skipped} binary or undecodable files skipped)")
    if len(readable) == 1:
        t = readable[0][1]
        cut = int(len(t) * (1 - VAL_FRACTION))
        return [t[:cut]], [t[cut:]], source
    train = [t for f, t in readable if not is_val(f.rel)]
    val = [t for f, t in readable if is_val(f.rel)]
    if not val or not train:  # tiny folders: fall back to a positional split of the whole text
        joined = "\n".join(t for _, t in readable)
        cut = int(len(joined) * (1 - VAL_FRACTION))
        return [joined[:cut]], [joined[cut:]], source
    return train, val, source


def _encode_capped(tok, texts: list[str], cap: int | None) -> np.ndarray:
    """Encode documents separated by <|endoftext|> (when the vocabulary has it) until ``cap`` tokens."""
    eot = tok.eot_id
    out: list[int] = []
    for t in texts:
        out.extend(tok.encode(t))
        if eot is not None:
            out.append(eot)
        if cap is not None and len(out) >= cap:
            return np.asarray(out[:cap], dtype=np.int32)
    return np.asarray(out, dtype=np.int32)


def build_corpus(tok, *, data: str | None, tokens: int | None, min_tokens: int = 2) -> Corpus:
    """Tokenize the corpus; ``tokens`` caps train+val at 90/10 like the notes' phases."""
    train_texts, val_texts, source = read_split_texts(data)
    cap_val = None if tokens is None else max(int(round(tokens * VAL_FRACTION)), min_tokens)
    cap_train = None if tokens is None else max(tokens - cap_val, min_tokens)
    train = _encode_capped(tok, train_texts, cap_train)
    val = _encode_capped(tok, val_texts, cap_val)
    if len(val) < min_tokens or len(train) < min_tokens:
        raise DataError(f"corpus {source} is too small: {len(train)} train and {len(val)} val tokens; "
                        f"need at least {min_tokens} each")
    return Corpus(train, val, source, len(train_texts), len(val_texts))
