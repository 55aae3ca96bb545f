"""Reading edgekit model files: an onnxruntime session plus the metadata edgekit wrote into the file.

    sess, card = open_model("phase3.onnx", threads=1)
    card.family, card.config, card.tokenizer          # a ModelCard (runtime/modelcard.py)

All of edgekit's metadata sits under one ONNX metadata key, ``edgekit``, as a JSON object (the format:
docs/model-file.md): format, family, config, tokenizer, generation defaults, quantization recipe,
deploy target, verification figures, source checkpoint sha256 and the edgekit version. Nothing outside
the file is needed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import onnxruntime as ort

from edgekit.errors import ModelFileError
from edgekit.runtime.modelcard import FORMAT_VERSION, META_KEY, ModelCard  # noqa: F401 (re-exported)


def session_options(threads: int | None) -> ort.SessionOptions:
    """Options for low-latency CPU inference: sequential execution, every graph optimization."""
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ModelFileError(f"threads must be a positive integer or None (all cores); got {threads!r}")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
    if threads == 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def open_model(path: str | os.PathLike, *, threads: int | None = None) -> tuple[ort.InferenceSession, ModelCard]:
    """An onnxruntime session of the file and its ModelCard; a missing, empty or corrupt file is a ModelFileError."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise ModelFileError(f"model path {str(path)!r} is a folder; give the .onnx file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"model file {str(path)!r} is empty")
    try:
        sess = ort.InferenceSession(str(path), sess_options=session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except ModelFileError:
        raise
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... types for corrupt files
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ModelFileError(f"{path} is not a loadable ONNX model ({first[:160]})") from None
    card = ModelCard.from_json(sess.get_modelmeta().custom_metadata_map.get(META_KEY), path=str(path))
    return sess, card
