"""edgekit's runtime: load an exported model and run it, with numpy, onnxruntime and tiktoken only.

    from edgekit.runtime import load
    lm = load("phase3.onnx", threads=1)
    print(lm.generate("def get_", max_new_tokens=32).text)
    for piece in lm.stream("import "):
        print(piece, end="", flush=True)

``load`` reads the family recorded in the file and returns that family's model object
(``GPTModel`` for language models, a scorer or encoder for the other families).
Importing this package never imports torch or onnx.
"""
from __future__ import annotations

import importlib
import os

from edgekit.errors import EdgekitError, ModelFileError
from edgekit.runtime.modelfile import open_model

__all__ = ["load", "EdgekitError", "ModelFileError"]


def load(path: str | os.PathLike, *, threads: int | None = None):
    """Open an edgekit .onnx file and return the model object for its family."""
    from edgekit.models.registry import FAMILIES  # torch-free: entries are module paths

    sess, meta = open_model(path, threads=threads)
    family = meta["family"]
    if family not in FAMILIES:
        raise ModelFileError(f"{path}: family {family!r} is not known to this edgekit; known: {', '.join(FAMILIES)}")
    module = importlib.import_module(FAMILIES[family].runtime_module)
    return module.load(sess, meta, path=str(path), threads=threads)
