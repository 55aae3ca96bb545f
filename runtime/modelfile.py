"""Reading edgekit model files: an onnxruntime session plus the metadata edgekit wrote into the file.

    sess, meta = open_model("phase3.onnx", threads=1)
    meta["family"], meta["config"], meta["tokenizer"]

All of edgekit's metadata sits under one ONNX metadata key, ``edgekit``, as a JSON object:
format, family, config, tokenizer, generation defaults, quantization recipe, verification figures,
source checkpoint sha256 and the edgekit version. Nothing outside the file is needed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import onnxruntime as ort

from edgekit.errors import ModelFileError

META_KEY = "edgekit"
FORMAT_VERSION = 1
REQUIRED = ("format", "family", "config")


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


def parse_metadata(raw: str | None, *, path: str = "model") -> dict:
    """Validate the ``edgekit`` metadata JSON; a missing or tampered entry is a clear error."""
    if raw is None:
        raise ModelFileError(f"{path} has no edgekit metadata; export it with `edgekit export` "
                             "(plain ONNX files are not edgekit models)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path}: edgekit metadata is not valid JSON ({e.msg}); the file was altered") from None
    if not isinstance(meta, dict) or any(k not in meta for k in REQUIRED):
        raise ModelFileError(f"{path}: edgekit metadata lacks {', '.join(k for k in REQUIRED if k not in (meta if isinstance(meta, dict) else {}))}")
    if meta["format"] != FORMAT_VERSION:
        raise ModelFileError(f"{path}: edgekit metadata format {meta['format']!r} is not supported (this "
                             f"edgekit reads format {FORMAT_VERSION})")
    if not isinstance(meta["config"], dict):
        raise ModelFileError(f"{path}: edgekit metadata 'config' must be an object")
    return meta


def open_model(path: str | os.PathLike, *, threads: int | None = None) -> tuple[ort.InferenceSession, dict]:
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
    meta = parse_metadata(sess.get_modelmeta().custom_metadata_map.get(META_KEY), path=str(path))
    return sess, meta
