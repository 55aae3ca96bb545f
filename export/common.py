"""Export steps shared by every family: a chain of pure steps with keyword-only arguments.

    m = to_onnx(module, args=(x,), input_names=["x"], output_names=["y"], dynamic_shapes={...})
    m = simplify(m)                        # onnxsim; dynamic axes checked to stay symbolic
    q = quantize_int8(m)                   # onnxruntime.quantization.quantize_dynamic
    write_model(q, path=out, meta={...})   # metadata embedded, atomic write, one self-contained file

Each step returns a new ``onnx.ModelProto``; ``StepRecord`` rows make the export report table.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import edgekit
from edgekit.errors import ExportError
from edgekit.fileio import atomic_path
from edgekit.runtime.modelcard import FORMAT_VERSION, META_KEY, ModelCard
from edgekit.runtime.modelfile import session_options

OPSET = 18


@dataclass
class StepRecord:
    """One row of the export report."""

    step: str  # export, simplify, optimize, quantize:<scheme>, ...
    bytes: int  # serialized model size after the step
    parity: dict  # figure name -> value (max_abs_diff, val_loss_delta_pct, greedy_agreement, ...)
    seconds: float  # wall time of the step including its verification
    ok: bool = True  # within its budget
    note: str = ""  # why skipped or failed


@dataclass
class ExportReport:
    output: str
    family: str
    scheme: str
    steps: list[StepRecord] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [("step", "size", "parity", "time", "status")]
        for s in self.steps:
            par = ", ".join(f"{k}={_fmt(v)}" for k, v in s.parity.items())
            rows.append((s.step, _human_bytes(s.bytes), par, f"{s.seconds:.1f}s",
                         ("ok" + (f" ({s.note})" if s.note else "")) if s.ok else f"FAIL {s.note}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        auto = self.extra.get("auto")
        if auto:  # why each other scheme lost, in the table and not only in --json
            lines.append(f"auto: chose {auto['chosen']}")
            lines += [f"  {scheme}: {why}" for scheme, why in auto.get("rejected", {}).items()]
        return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def _human_bytes(n: int) -> str:
    """Decimal units (1 MB = 1,000,000 bytes), as the README and `edgekit export`'s last line use."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def progress(opts):
    """The export's progress writer: stderr lines when ``opts.progress``, else nothing (stdout is for results)."""
    from edgekit.train.common import log

    return log if opts.progress else (lambda _m: None)


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def model_bytes(model: onnx.ModelProto) -> int:
    """Bytes on disk: the proto plus any external data it points to (export/weights.py)."""
    from edgekit.export.weights import total_bytes

    return total_bytes(model)


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' chatter (warnings, progress prints) unless EDGEKIT_DEBUG is set."""
    if os.environ.get("EDGEKIT_DEBUG"):
        yield
        return
    sink = io.StringIO()
    old = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(old)


def to_onnx(module, *, args: tuple, input_names: list[str], output_names: list[str], dynamic_shapes,
            dim_names: dict[str, str] | None = None, opset: int = OPSET,
            custom_translation_table: dict | None = None) -> onnx.ModelProto:
    """torch.onnx.export (dynamo) into memory: no external data, symbolic dims renamed to ``dim_names``."""
    import torch

    t0 = time.time()
    with _quiet(), torch.no_grad():
        try:
            prog = torch.onnx.export(module, args, input_names=input_names, output_names=output_names,
                                     dynamic_shapes=dynamic_shapes, dynamo=True, external_data=False,
                                     opset_version=opset, optimize=True, verbose=False,
                                     custom_translation_table=custom_translation_table)
        except Exception as e:
            raise ExportError(f"torch.onnx.export failed: {str(e).splitlines()[0][:200]}") from e
    model = prog.model_proto
    if dim_names:
        rename_dims(model, dim_names)
    model.doc_string = f"exported by edgekit {edgekit.__version__}"
    return model


def rename_dims(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    """Rename symbolic dims (the exporter's s53-style names) on graph inputs and outputs, in place."""
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in mapping:
                d.dim_param = mapping[d.dim_param]


def symbolic_dims(model: onnx.ModelProto) -> dict[str, list]:
    """Input and output name -> shape with symbolic names kept (for checking dynamic axes survive)."""
    out = {}
    for vi in list(model.graph.input) + list(model.graph.output):
        out[vi.name] = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
    return out


def check_dynamic(before: onnx.ModelProto, after: onnx.ModelProto, *, step: str) -> None:
    """Fail when a step froze an axis that was symbolic before it."""
    a, b = symbolic_dims(before), symbolic_dims(after)
    frozen = [f"{name}[{i}]" for name, dims in a.items() for i, d in enumerate(dims)
              if isinstance(d, str) and d and name in b and i < len(b[name]) and not isinstance(b[name][i], str)]
    if frozen:
        raise ExportError(f"{step} froze dynamic axes {', '.join(frozen)}")


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim with dynamic shapes kept symbolic; the caller verifies outputs afterwards.

    Weights stored outside the proto (export/weights.py) go to onnxsim as graph inputs of their shape, so
    it never loads them: it simplifies the graph, and a weight has nothing to fold (edgekit's graphs
    apply no op to a weight before its MatMul, Gather or LayerNorm).
    """
    import onnxsim

    from edgekit.export.weights import is_external

    lifted = [t for t in model.graph.initializer if is_external(t)]
    work = model
    if lifted:
        work = onnx.ModelProto()
        work.CopyFrom(model)
        keep = [t for t in work.graph.initializer if not is_external(t)]
        del work.graph.initializer[:]
        work.graph.initializer.extend(keep)
        work.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in lifted)
    with _quiet():
        try:
            # MatMul+Add -> Gemm needs 2-D inputs, so on (B, T, C) activations it wraps every projection in
            # Shape/Slice/Concat/Reshape chains: more nodes, slower decoding. Keep MatMul+Add.
            simplified, ok = onnxsim.simplify(work, check_n=0, perform_optimization=False,
                                              skip_shape_inference=False,
                                              skipped_optimizers=["fuse_matmul_add_bias_into_gemm"])
        except Exception as e:
            raise ExportError(f"onnxsim failed: {str(e).splitlines()[0][:200]}") from e
    if not ok:
        raise ExportError("onnxsim could not validate the simplified model")
    if lifted:
        names = {t.name for t in lifted}
        inputs = [i for i in simplified.graph.input if i.name not in names]
        del simplified.graph.input[:]
        simplified.graph.input.extend(inputs)
        used = {x for n in simplified.graph.node for x in n.input}
        simplified.graph.initializer.extend(t for t in lifted if t.name in used)
    check_dynamic(model, simplified, step="simplify")
    return simplified


def quantize_int8(model: onnx.ModelProto, *, op_types: tuple[str, ...] = ("MatMul", "Gemm", "Gather"),
                  per_channel: bool = False, exclude_nodes: list[str] | None = None,
                  include_nodes: list[str] | None = None) -> onnx.ModelProto:
    """onnxruntime.quantization.quantize_dynamic: int8 weights, activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as d, _quiet():
        src, dst = os.path.join(d, "in.onnx"), os.path.join(d, "out.onnx")
        onnx.save(model, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types),
                         per_channel=per_channel, nodes_to_exclude=exclude_nodes or [],
                         nodes_to_quantize=include_nodes or [],
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
        return onnx.load(dst)


def quantize_nbits(model: onnx.ModelProto, *, bits: int = 4, block_size: int = 32, include_gather: bool = True,
                   accuracy_level: int = 4, symmetric: bool = True,
                   exclude_nodes: list[str] | None = None) -> onnx.ModelProto:
    """Weight-only block quantization: MatMul -> MatMulNBits (and Gather -> GatherBlockQuantized).

    accuracy_level 4 lets onnxruntime quantize activations to int8 and use integer dot products
    (VNNI) instead of dequantizing weights to fp32 for every product: several times faster here.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    op_types = ("MatMul", "Gather") if include_gather else ("MatMul",)
    quant_axes = (("MatMul", 0), ("Gather", 1)) if include_gather else (("MatMul", 0),)
    with _quiet():
        cfg = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, bits=bits,
                                           accuracy_level=accuracy_level, op_types_to_quantize=op_types,
                                           quant_axes=quant_axes)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # the quantizer rewrites the model it is given in place
        q = MatMulNBitsQuantizer(copy, algo_config=cfg, nodes_to_exclude=exclude_nodes or [])
        q.process()
        return q.model.model


def session(model: onnx.ModelProto | str | os.PathLike, *, threads: int | None = 1,
            config: dict | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session from a ModelProto or a path (used for verification and timing); ``config``:
    the session entries the file will ask its readers for (ModelCard deploy.session_config)."""
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, sess_options=session_options(threads, config), providers=["CPUExecutionProvider"])


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc keeps it otherwise): an export frees a
    session or a candidate model after every step, and without this each one stays in the peak RSS."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back
        pass


def max_abs_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# Figures that depend on the run, not on the model (timings): export keeps them out of the ``edgekit`` entry,
# so the same checkpoint and options give the same file bytes on a quiet or a busy machine (issue 24), and
# records them apart under RUN_KEY (docs/model-file.md).
RUN_KEY = "edgekit.run"
RUN_FIGURES = frozenset({"seconds", "decode_tokens_per_s", "p50_us", "p50_fp32_us", "p50_ms_per_sequence"})


def split_run_figures(meta):
    """(identity, run): ``meta`` without the run-dependent figures (RUN_FIGURES at any depth), and those
    figures alone at the same paths (rows of a list keep their ``step`` name so they can be matched)."""
    if isinstance(meta, dict):
        ident, run = {}, {}
        for k, v in meta.items():
            if k in RUN_FIGURES:
                run[k] = v
                continue
            ident[k], sub = split_run_figures(v)
            if sub:
                run[k] = sub
        return ident, run
    if isinstance(meta, list):
        pairs = [split_run_figures(v) for v in meta]
        rows = [({"step": v["step"]} if isinstance(v, dict) and "step" in v else {}) | r
                for v, (_, r) in zip(meta, pairs) if r]
        return [i for i, _ in pairs], rows
    return meta, {}


def embed_metadata(model: onnx.ModelProto, meta: dict) -> onnx.ModelProto:
    """Store edgekit's metadata (one JSON object under the ``edgekit`` key) in the model, validated as a
    reader validates it (ModelCard), so no file is written that the runtime would refuse. Timings go under
    RUN_KEY instead (split_run_figures): the ``edgekit`` entry and the graph are the same on every run."""
    ident, run = split_run_figures(meta)
    card = ModelCard.from_dict({"format": FORMAT_VERSION, "edgekit_version": edgekit.__version__, **ident},
                               path="the exported model")
    for prop in list(model.metadata_props):
        if prop.key in (META_KEY, RUN_KEY):
            model.metadata_props.remove(prop)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        META_KEY: card.to_json(),
                                        **({RUN_KEY: json.dumps(run, sort_keys=True)} if run else {})})
    model.producer_name = "edgekit"
    model.producer_version = edgekit.__version__
    return model


def write_model(model: onnx.ModelProto, *, path: str | os.PathLike, meta: dict, store=None) -> Path:
    """Embed metadata and write the model atomically: one self-contained .onnx when it fits protobuf's
    2 GB, else the .onnx plus its weights as ONNX external data in ``<path>.data`` (needs the ``store``
    its weights live in: export/weights.py). A stale ``<path>.data`` from an earlier export is removed."""
    from edgekit.export.weights import PROTO_LIMIT, external_bytes, total_bytes

    model = embed_metadata(model, meta)
    path = Path(path)
    data = path.with_name(path.name + ".data")
    if total_bytes(model) <= PROTO_LIMIT:
        if external_bytes(model):
            model = store.inline(model)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString())
        data.unlink(missing_ok=True)
        return path
    if store is None or not external_bytes(model):
        raise ExportError(f"model is {total_bytes(model) / 1e9:.2f} GB: a single .onnx holds at most 2 GB, and only "
                          "fp32 weights are written as external data")
    with atomic_path(data) as tmp_data:
        model = store.write_external(model, path, tmp_data)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString())
    return path
