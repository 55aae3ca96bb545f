"""Reading edgekit model files: an onnxruntime session plus the metadata edgekit wrote into the file.

    sess, card = open_model("phase3.onnx", threads=1)
    card.family, card.config, card.tokenizer          # a ModelCard (runtime/modelcard.py)

All of edgekit's metadata sits under one ONNX metadata key, ``edgekit``, as a JSON object (the format:
docs/model-file.md): format, family, config, tokenizer, generation defaults, quantization recipe,
deploy target, verification figures, source checkpoint sha256 and the edgekit version. Nothing outside
the file is needed.
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path

import onnxruntime as ort

from edgekit.errors import ModelFileError
from edgekit.limits import LIMITS
from edgekit.runtime.graphcheck import check_graph
from edgekit.runtime.modelcard import FORMAT_VERSION, META_KEY, ModelCard  # noqa: F401 (re-exported)


def session_options(threads: int | None, config: dict | None = None) -> ort.SessionOptions:
    """Options for low-latency CPU inference: sequential execution, every graph optimization; ``config``:
    session entries the file asks for (its ModelCard's deploy.session_config, validated there)."""
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
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, v)
    return so


def _varint(buf, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated or bad varint")
        byte = buf[i]
        v |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return v, i
        shift += 7


def _fields(buf, start: int = 0, end: int | None = None):
    """(field number, payload slice or None) of each field of one protobuf message in buf[start:end]."""
    i, end = start, len(buf) if end is None else end
    while i < end:
        tag, i = _varint(buf, i)
        kind = tag & 7
        if kind == 0:
            _, i = _varint(buf, i)
            yield tag >> 3, None
        elif kind in (1, 5):
            i += 8 if kind == 1 else 4
            yield tag >> 3, None
        elif kind == 2:
            n, i = _varint(buf, i)
            if i + n > end:
                raise ValueError("truncated")
            yield tag >> 3, (i, i + n)
            i += n
        else:
            raise ValueError(f"wire type {kind}")
        if i > end:
            raise ValueError("truncated")


def read_metadata(path: str | os.PathLike) -> str | None:
    """The ``edgekit`` metadata_props value of an ONNX file, read before any session exists (a session's
    options depend on it: ModelCard.deploy.session_config). A ModelProto's field 14 is metadata_props
    (StringStringEntryProto: key 1, value 2); every other field, the graph with its weights too, is skipped
    by its length over a memory map, so only the pages holding field headers are read. Written by hand:
    the runtime does not import onnx (web/modelfile.js is the same reader in JavaScript). Raises ValueError
    for bytes that are not a protobuf message."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for num, span in _fields(buf):
            if num != 14 or span is None:
                continue
            if span[1] - span[0] > LIMITS.metadata_bytes + 1024:
                raise ValueError(f"a metadata entry of {span[1] - span[0]:,} bytes (at most {LIMITS.metadata_bytes:,})")
            entry = {n: bytes(buf[s[0]:s[1]]) for n, s in _fields(buf, *span) if s is not None and n in (1, 2)}
            if entry.get(1, b"").decode("utf-8", errors="replace") == META_KEY:
                return entry.get(2, b"").decode("utf-8")
    return None


def _session(path: Path, threads: int | None, config: dict | None) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads, config),
                                    providers=["CPUExecutionProvider"])
    except ModelFileError:
        raise
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... types for corrupt files
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ModelFileError(f"{path} is not a loadable ONNX model ({first[:160]})") from None


def open_model(path: str | os.PathLike, *, threads: int | None = None) -> tuple[ort.InferenceSession, ModelCard]:
    """The file's ModelCard and an onnxruntime session made as the card asks; a missing, empty, corrupt or
    non-edgekit file is a ModelFileError (the metadata is validated before onnxruntime parses the graph)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise ModelFileError(f"model path {str(path)!r} is a folder; give the .onnx file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"model file {str(path)!r} is empty")
    try:
        raw = read_metadata(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path} is not a loadable ONNX model ({e})") from None
    check_graph(path)  # constant-shape bombs, before onnxruntime folds them
    if raw is None:
        _session(path, threads, None)  # a corrupt file says so; a plain ONNX file lacks the metadata
    card = ModelCard.from_json(raw, path=str(path))
    return _session(path, threads, dict(card.deploy.session_config)), card
