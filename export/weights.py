"""Weights on disk: exports that never hold a large model in memory, and files with ONNX external data.

    store = WeightStore.beside("out/model.onnx")     # a work folder next to the output, removed by close()
    t = store.put("h.0.mlp.c_fc.weight_t", array)      # a TensorProto: inline when small, else external
    w = store.read(t)                                  # read-only view of the bytes on disk (np.memmap)
    sess_path = store.save(model, "step.onnx")         # a model file onnxruntime opens by path (it maps the data)
    write_model(model, path="out/model.onnx", store=store, meta=...)   # common.write_model, with this store

Why by hand: onnx's external-data helpers convert a model that is already in memory (``onnx.save`` with
``save_as_external_data``); here the model never is. Tensors are written one at a time, at page-aligned
offsets, so onnxruntime maps them instead of copying them (a session over the 124M fp32 graph grows by
11 MB, not 500 MB, with prepacking off), the quantizers read one tensor at a time, and a graph of any size
is a small ``ModelProto`` that points into the file. ONNX's own format is unchanged: ``external_data``
entries with ``location``, ``offset`` and ``length``, relative to the model file's folder.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edgekit.errors import ExportError

ALIGN = 4096  # page-aligned offsets: onnxruntime maps such initializers instead of copying them
INLINE_MAX = 64 * 1024  # bytes: smaller tensors (LayerNorm weights, biases, shapes) stay inside the proto
PROTO_LIMIT = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GiB, less room for the graph and metadata
DATA_FILE = "weights.bin"


def is_external(t: TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL


def _external_info(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def external_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers that live outside the proto."""
    return sum(int(_external_info(t).get("length", 0)) for t in model.graph.initializer if is_external(t))


def total_bytes(model: onnx.ModelProto) -> int:
    """What the model takes on disk: the proto plus its external data."""
    return model.ByteSize() + external_bytes(model)


class WeightStore:
    """One data file of page-aligned tensors in a work folder, and the models that point into it."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / DATA_FILE
        self._f = open(self.path, "wb")
        self.end = 0

    @classmethod
    def beside(cls, out: str | os.PathLike) -> WeightStore:
        """A store in a fresh hidden folder next to ``out`` (same file system: the final data file is a rename)."""
        parent = Path(out).parent if str(Path(out).parent) else Path(".")
        return cls(tempfile.mkdtemp(prefix=".edgekit-export-", dir=parent))

    def put(self, name: str, array: np.ndarray) -> TensorProto:
        """Store ``array`` under ``name``: inline when small, else appended to the data file."""
        array = np.ascontiguousarray(array)
        if array.nbytes <= INLINE_MAX:
            return numpy_helper.from_array(array, name)
        offset = -(-self.end // ALIGN) * ALIGN
        try:
            self._f.seek(offset)
            self._f.write(memoryview(array).cast("B"))
        except OSError as e:  # a full disk or a file-size limit: a clear error, the output untouched
            raise ExportError(f"could not write the export's work file in {str(self.folder.parent)!r}: "
                              f"{e.strerror}; the previous file is unchanged") from e
        self.end = offset + array.nbytes
        t = TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape,
                        data_location=TensorProto.EXTERNAL)
        for k, v in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(array.nbytes))):
            t.external_data.add(key=k, value=v)
        return t

    def read(self, t: TensorProto) -> np.ndarray:
        """The tensor's values: a read-only memory map for stored tensors (no copy), else the inline array."""
        if not is_external(t):
            return numpy_helper.to_array(t)
        self._f.flush()
        info = _external_info(t)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=int(info["offset"]), shape=tuple(t.dims))

    def save(self, model: onnx.ModelProto, name: str) -> Path:
        """Write ``model`` (its external tensors pointing into this store) into the work folder, for a session."""
        self._f.flush()
        path = self.folder / name
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        return path

    def inline(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of ``model`` with every stored tensor inside the proto (for files under 2 GB)."""
        if total_bytes(model) > PROTO_LIMIT:
            raise ExportError(f"model is {total_bytes(model) / 1e9:.2f} GB; a single .onnx holds at most 2 GB")
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for t in m.graph.initializer:
            if is_external(t):
                data = np.asarray(self.read(t)).tobytes()
                del t.external_data[:]
                t.data_location = TensorProto.DEFAULT
                t.raw_data = data
        return m

    def write_external(self, model: onnx.ModelProto, out: Path, tmp_data: Path) -> onnx.ModelProto:
        """Copy the stored tensors into ``tmp_data`` (to be renamed ``<out>.data``) and return the model
        pointing at ``<out name>.data``: the layout onnxruntime and onnx read beside the model file."""
        self._f.flush()
        m = onnx.ModelProto()
        m.CopyFrom(model)
        location, end = out.name + ".data", 0
        with open(self.path, "rb") as src, open(tmp_data, "wb") as dst:
            for t in m.graph.initializer:
                if not is_external(t):
                    continue
                info = _external_info(t)
                offset = -(-end // ALIGN) * ALIGN
                dst.seek(offset)
                src.seek(int(info["offset"]))
                _copy_bytes(src, dst, int(info["length"]))
                end = offset + int(info["length"])
                del t.external_data[:]
                for k, v in (("location", location), ("offset", str(offset)), ("length", info["length"])):
                    t.external_data.add(key=k, value=v)
            dst.flush()
            os.fsync(dst.fileno())
        return m

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> WeightStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _copy_bytes(src, dst, n: int, chunk: int = 64 << 20) -> None:
    while n > 0:
        buf = src.read(min(chunk, n))
        if not buf:
            raise ExportError("the export's weight file ended early; was it changed during the export?")
        dst.write(buf)
        n -= len(buf)


def check_disk_space(folder: str | os.PathLike, need: int) -> None:
    """Fail before any long work when ``folder`` cannot hold ``need`` more bytes."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise ExportError(f"export needs about {need / 1e9:.1f} GB free in {str(folder)!r} (work files and the "
                          f"output); {free / 1e9:.1f} GB are free")
