"""edgekit's runtime: load an exported model and run it, with numpy, onnxruntime and tiktoken only.

    from edgekit.runtime import load
    lm = load("phase3.onnx", threads=1)
    print(lm.generate("def get_", max_new_tokens=32).text)
    for piece in lm.stream("import "):
        print(piece, end="", flush=True)

``load`` reads the family recorded in the file and returns that family's model object
(``GPTModel`` for language models, a scorer or encoder for the other families); ``family_runtime``
is the one way to find a family's runtime module (its hooks: ``load``, ``bench_metrics``,
``bench_workload``, ``weight_group``); every model object carries the file's ``ModelCard`` as ``.card``.
The runtime returns objects and never prints.
Importing this package never imports torch, onnx or edgekit's models/.
"""
from __future__ import annotations

import importlib
import os

from edgekit.errors import EdgekitError, ModelFileError
from edgekit.registry import FAMILIES  # torch-free: entries are module paths
from edgekit.runtime.modelcard import ModelCard
from edgekit.runtime.modelfile import open_model

__all__ = ["load", "family_runtime", "ModelCard", "EdgekitError", "ModelFileError"]


def family_runtime(family: str, *, path: str | os.PathLike = "model"):
    """The runtime module of ``family`` (from the torch-free registry); unknown families are a clear error."""
    if family not in FAMILIES:
        raise ModelFileError(f"{path}: family {family!r} is not known to this edgekit; known: {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[family].runtime_module)


def load(path: str | os.PathLike, *, threads: int | None = None):
    """Open an edgekit .onnx file and return the model object for its family."""
    sess, card = open_model(path, threads=threads)
    return family_runtime(card.family, path=path).load(sess, card, path=str(path), threads=threads)
