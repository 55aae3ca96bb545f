"""Constant-shape bombs, found before onnxruntime sees a graph.

    check_graph("model.onnx")      # ModelFileError when a constant asks for more than the bound

onnxruntime folds constants when it makes a session: a 400-byte graph whose ConstantOfShape (or Expand, Tile,
Range) takes a constant shape of 10^9 elements allocates gigabytes before any input exists. This walks the
file's protobuf by hand over a memory map (the runtime does not import onnx; the weights are skipped by their
length, so only field headers are read), subgraphs (Loop, If, Scan bodies) included, and refuses any such op
whose constant inputs ask for more elements than ``LIMITS.graph_elements`` or the file's size in bytes,
whichever is larger, and any initializer whose dims claim more bytes than it carries.
"""
from __future__ import annotations

import math
import mmap
import os
import struct

from edgekit.errors import ModelFileError
from edgekit.guard import safe_text
from edgekit.limits import LIMITS

# ModelProto.graph; GraphProto.node, .initializer; NodeProto.input, .output, .op_type, .attribute;
# AttributeProto.name, .t, .g, .graphs; TensorProto.dims, .data_type, .int32_data, .int64_data, .raw_data,
# .float_data, .double_data
_MODEL_GRAPH, _G_NODE, _G_INIT = 7, 1, 5
_N_INPUT, _N_OP = 1, 4
_N_ATTR = 5
_A_NAME, _A_T, _A_G, _A_GRAPHS = 1, 5, 6, 11
_T_DIMS, _T_TYPE, _T_FLOAT, _T_INT32, _T_INT64, _T_NAME, _T_RAW, _T_DOUBLE, _T_LOCATION = 1, 2, 4, 5, 7, 8, 9, 10, 14
# bits per element by TensorProto data_type (4-bit types pack two to a byte); strings (8) and unknown types unchecked
_ITEM_BITS = {1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64, 14: 64, 15: 128,
              16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4}
_SMALL = 64  # constant int tensors read for their values (shapes, repeats, Range bounds) have few elements
_MAX_DEPTH = 16  # subgraphs nested deeper are refused (edgekit's graphs nest one Loop)


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


def _fields(buf, start: int, end: int):
    """(field number, wire type, value) of one message in buf[start:end]: value is an int (varint), a
    (start, end) span (length-delimited) or None (fixed-width)."""
    i = start
    while i < end:
        tag, i = _varint(buf, i)
        kind = tag & 7
        if kind == 0:
            v, i = _varint(buf, i)
            yield tag >> 3, kind, v
        elif kind in (1, 5):
            i += 8 if kind == 1 else 4
            yield tag >> 3, kind, None
        elif kind == 2:
            n, i = _varint(buf, i)
            if i + n > end:
                raise ValueError("truncated")
            yield tag >> 3, kind, (i, i + n)
            i += n
        else:
            raise ValueError(f"wire type {kind}")
    if i > end:
        raise ValueError("truncated")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed(buf, span) -> list[int]:
    out, i = [], span[0]
    while i < span[1]:
        v, i = _varint(buf, i)
        out.append(_signed(v))
    return out


class _Tensor:
    """What the check needs of one TensorProto: name, dims, element type, bytes carried, small values."""

    def __init__(self, buf, span):
        self.name, self.dims, self.dtype, self.carried, self.values, self.external = "", [], 0, 0, None, False
        self.raw_len = None  # bytes of raw_data, when the values are stored there
        ints: list[int] = []
        raw = None
        for num, kind, v in _fields(buf, *span):
            if num == _T_DIMS:
                self.dims += _packed(buf, v) if kind == 2 else [_signed(v)]
            elif num == _T_TYPE and kind == 0:
                self.dtype = v
            elif num == _T_NAME and kind == 2:
                self.name = bytes(buf[v[0]:v[1]]).decode("utf-8", errors="replace")
            elif num == _T_RAW and kind == 2:
                raw = v
                self.raw_len = v[1] - v[0]
                self.carried += v[1] - v[0]
            elif num in (_T_INT32, _T_INT64) and kind == 2:
                if v[1] - v[0] <= 10 * _SMALL:
                    ints += _packed(buf, v)
                self.carried += v[1] - v[0]
            elif num in (_T_INT32, _T_INT64) and kind == 0:
                ints.append(_signed(v))
                self.carried += 8
            elif num in (_T_FLOAT, _T_DOUBLE) and kind == 2:
                self.carried += v[1] - v[0]
            elif num == _T_LOCATION and kind == 0:
                self.external = v == 1
        n = self.elements()
        if n is not None and n <= _SMALL and self.dtype in (6, 7):
            if raw is not None:
                width = 8 if self.dtype == 7 else 4
                data = bytes(buf[raw[0]:raw[1]])
                if len(data) == n * width:
                    self.values = list(struct.unpack(f"<{n}{'q' if width == 8 else 'i'}", data))
            elif len(ints) == n:
                self.values = ints

    def elements(self) -> int | None:
        if any(d < 0 for d in self.dims):
            return None
        return math.prod(self.dims)


class _Walk:
    def __init__(self, buf, path: str, bound: int):
        self.buf, self.path, self.bound = buf, path, bound

    def fail(self, msg: str):
        raise ModelFileError(f"{self.path}: {msg}; the graph is refused before onnxruntime allocates it")

    def graph(self, span, consts: dict, depth: int) -> None:
        if depth > _MAX_DEPTH:
            self.fail(f"subgraphs nest more than {_MAX_DEPTH} levels")
        consts = dict(consts)
        nodes = []
        for num, kind, v in _fields(self.buf, *span):
            if num == _G_INIT and kind == 2:
                self.initializer(_Tensor(self.buf, v), consts)
            elif num == _G_NODE and kind == 2:
                nodes.append(v)
        for v in nodes:  # Constant nodes first: a graph need not list them before their readers
            self.constant(v, consts)
        for v in nodes:
            self.node(v, consts, depth)

    def initializer(self, t: _Tensor, consts: dict) -> None:
        n = t.elements()
        if n is None:
            self.fail(f"initializer {safe_text(t.name, 60)!r} has a negative dimension {t.dims}")
        bits = _ITEM_BITS.get(t.dtype)
        claimed = (n * bits + 7) // 8 if bits else 0
        if not t.external and (claimed > t.raw_len if t.raw_len is not None else not t.carried and n > self.bound):
            self.fail(f"initializer {safe_text(t.name, 60)!r} claims {n:,} elements but carries {t.carried:,} bytes")
        if t.values is not None:
            consts[t.name] = t.values

    def _node_parts(self, span):
        op, inputs, attrs = "", [], []
        for num, kind, v in _fields(self.buf, *span):
            if kind != 2:
                continue
            if num == _N_OP:
                op = bytes(self.buf[v[0]:v[1]]).decode("utf-8", errors="replace")
            elif num == _N_INPUT:
                inputs.append(bytes(self.buf[v[0]:v[1]]).decode("utf-8", errors="replace"))
            elif num == _N_ATTR:
                attrs.append(v)
        return op, inputs, attrs

    def constant(self, span, consts: dict) -> None:
        op, _, attrs = self._node_parts(span)
        if op != "Constant":
            return
        outputs = [bytes(self.buf[v[0]:v[1]]).decode("utf-8", errors="replace")
                   for num, kind, v in _fields(self.buf, *span) if num == 2 and kind == 2]
        for a in attrs:
            for num, kind, v in _fields(self.buf, *a):
                if num == _A_T and kind == 2 and outputs:
                    t = _Tensor(self.buf, v)
                    if t.values is not None:
                        consts[outputs[0]] = t.values

    def node(self, span, consts: dict, depth: int) -> None:
        op, inputs, attrs = self._node_parts(span)
        const = lambda i: consts.get(inputs[i]) if len(inputs) > i and inputs[i] else None  # noqa: E731
        asked = None
        if op == "ConstantOfShape":
            shape = const(0)
            asked = math.prod(max(d, 0) for d in shape) if shape is not None else None
        elif op == "Expand":
            shape = const(1)
            asked = math.prod(max(d, 1) for d in shape) if shape is not None else None
        elif op == "Tile":
            reps = const(1)
            asked = math.prod(max(d, 1) for d in reps) if reps is not None else None
        elif op == "Range":
            start, limit, delta = const(0), const(1), const(2)
            if start and limit and delta and len(start) == len(limit) == len(delta) == 1 and delta[0]:
                asked = max(math.ceil((limit[0] - start[0]) / delta[0]), 0)
        if asked is not None and asked > self.bound:
            self.fail(f"a {op} node asks for {asked:,} elements from constants (at most {self.bound:,})")
        for a in attrs:
            for num, kind, v in _fields(self.buf, *a):
                if num in (_A_G, _A_GRAPHS) and kind == 2:
                    self.graph(v, consts, depth + 1)


def check_graph(path: str | os.PathLike) -> None:
    """Raise ModelFileError when the graph in ``path`` asks constants for more elements than the bound."""
    size = os.path.getsize(path)
    bound = max(LIMITS.graph_elements, size)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        walk = _Walk(buf, str(path), bound)
        try:
            for num, kind, v in _fields(buf, 0, len(buf)):
                if num == _MODEL_GRAPH and kind == 2:
                    walk.graph(v, {}, 0)
        except (ValueError, struct.error, OverflowError) as e:
            raise ModelFileError(f"{path} is not a loadable ONNX model ({e})") from None
