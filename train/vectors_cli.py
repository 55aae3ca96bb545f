"""`python -m edgekit.train.vectors tokens|sentences TEXT -o x.npy`: text -> MiniLM vectors for `edgekit infer`.

Errors are one ``edgekit: error:`` line, like the edgekit CLI's; -o is checked like export's (never an input,
never a special file) and written atomically.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.train.vectors import _cache_dir, encode_sentences, split_sentences, token_ids, token_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgekit.train.vectors",
                                 description="Turn text into MiniLM vectors (.npy) for `edgekit infer`.")
    ap.add_argument("kind", choices=["tokens", "sentences"],
                    help="tokens: (T, 384) static token vectors (seqae); sentences: (N, 384) sentence vectors (amn)")
    ap.add_argument("text", help="the text, or @FILE to read it from a file")
    ap.add_argument("-o", "--out", required=True, help="output .npy path")
    a = ap.parse_args(argv)
    try:
        _vectors_cli(a)
    except (EdgekitError, OSError, UnicodeDecodeError) as e:  # one line, as the edgekit CLI prints it
        if os.environ.get("EDGEKIT_DEBUG", "") not in ("", "0"):
            raise
        from edgekit.guard import safe_text

        what = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror else str(e)
        print(f"edgekit: error: {safe_text(what, 300)}", file=sys.stderr)
        return 1
    return 0


def _vectors_cli(a) -> None:
    from edgekit.fileio import atomic_path, check_writable_target

    out = a.out if a.out.endswith(".npy") else a.out + ".npy"  # np.save's naming
    source = a.text[1:] if a.text.startswith("@") else None
    check_writable_target(out, reads=(source,))
    cache = _cache_dir()
    if cache.exists() and not cache.is_dir():
        raise EdgekitError(f"EDGEKIT_CACHE {str(cache)!r} is not a folder; point it at a folder (or unset it)")
    text = Path(source).read_text(encoding="utf-8") if source is not None else a.text
    if a.kind == "tokens":
        arr = token_table()[token_ids(text)]
    else:
        arr = encode_sentences(split_sentences(text) or [text.strip()])
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr.astype(np.float32))
    print(f"wrote {out} {tuple(arr.shape)}", file=sys.stderr)
