"""Export spec shared by the vector families (seqae, amn): exporter fallback, parity on several shapes, int8 where measured.

    class SeqaeExport(VectorExport):      # declares names, axes, dummy inputs, probes, quality and its budget
        ...
    report = pipeline.run(SeqaeExport, ckpt, opts)

Budgets: fp32 graphs match PyTorch within pipeline.FP32_TOL (max |difference| over every output and
probe, probes of several batch sizes and lengths); int8 keeps the family's quality figure within its
budget of fp32's and must not be slower than fp32 (p50 of one sequence, ``opts.threads`` threads) to be
chosen by ``--quant auto``. Each int8 candidate is recorded as a step, chosen or not.
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import onnx
import torch

from edgekit.errors import ExportError
from edgekit.export import common, pipeline
from edgekit.export.schemes import Choice

def _torchscript(module, *, args, input_names, output_names, dynamic_axes) -> onnx.ModelProto:
    """The TorchScript exporter (dynamo=False): emits ONNX RNN/GRU/LSTM ops for nn.RNN & co."""
    buf = io.BytesIO()
    with common._quiet(), torch.no_grad():
        torch.onnx.export(module, args, buf, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=common.OPSET, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def torch_outputs(module, feeds: dict) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*(torch.from_numpy(v) for v in feeds.values()))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def parity(model: onnx.ModelProto, module, probes: list[dict]) -> float:
    """Max |onnxruntime - PyTorch| over every output of every probe."""
    sess = common.session(model, threads=1)
    worst = 0.0
    for feeds in probes:
        for a, b in zip(sess.run(None, feeds), torch_outputs(module, feeds)):
            worst = max(worst, common.max_abs_diff(a, b))
    return worst


def to_graph(module, *, args: tuple, input_names: list[str], output_names: list[str], dynamic_shapes,
             dynamic_axes: dict, check: list[dict], prefer: str = "dynamo") -> tuple[onnx.ModelProto, str, str]:
    """The dynamo exporter, or the TorchScript one where dynamo's graph is wrong or frozen on ``check`` inputs.

    Returns (graph, exporter name, note). ``prefer="torchscript"`` skips dynamo where it is known to
    fail: it specializes a tanh nn.RNN to the example's length (the graph rejects other lengths).
    """
    note = "dynamo specializes nn.RNN (tanh) to the example length" if prefer == "torchscript" else ""
    if prefer == "dynamo":
        try:
            graph = common.to_onnx(module, args=args, input_names=input_names, output_names=output_names,
                                   dynamic_shapes=dynamic_shapes)
            diff = parity(graph, module, check)
            if diff <= pipeline.FP32_TOL:
                _name_dims(graph, dynamic_axes)
                return graph, "dynamo", note
            note = f"dynamo graph differs by {diff:.2e} on other shapes"
        except Exception as e:  # noqa: BLE001 - any exporter failure falls back to the TorchScript exporter
            note = f"dynamo: {common.first_line(e)}"
    try:
        graph = _torchscript(module, args=args, input_names=input_names, output_names=output_names,
                             dynamic_axes=dynamic_axes)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"both ONNX exporters failed ({note}; torchscript: {common.first_line(e)})") from e
    return graph, "torchscript", note


def _name_dims(model: onnx.ModelProto, dims: dict) -> None:
    """Name the dynamic axes like the TorchScript exporter and drop stale shape annotations, in place.

    dynamo may annotate an output with the example's length (e.g. time=7 after an LSTM); onnxsim would
    fold that into a Reshape and freeze the axis, so outputs get symbolic axes and value_info is cleared.
    """
    mapping = {}
    for vi in model.graph.input:
        for ax, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.dim_param and ax in dims.get(vi.name, {}):
                mapping[d.dim_param] = dims[vi.name][ax]
    common.rename_dims(model, mapping)
    for vi in model.graph.output:
        for ax, d in enumerate(vi.type.tensor_type.shape.dim):
            if ax in dims.get(vi.name, {}):
                d.dim_param = dims[vi.name][ax]
    del model.graph.value_info[:]


def p50_ms(fn, *, rounds: int = 30, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds (pipeline.interleaved with one function)."""
    return pipeline.interleaved({"fn": fn}, rounds=1, calls=rounds, warmup=warmup)["fn"] * 1e3


class VectorExport(pipeline.ExportSpec):
    """What seqae and amn share. A subclass sets the names, axes and quality attributes and implements
    ``setup`` (probes: feeds of several shapes, the last one all held-out data), ``dummy_inputs``,
    ``dynamic_shapes``, ``quality(outputs_per_probe) -> float`` (higher is better) and ``family_meta``."""

    schemes = {"int8-dynamic": ("int8",)}  # onnxruntime quantize_dynamic; the file records the recipe's name
    int8 = "int8-dynamic"
    # auto rejects int8 only when 1.5x slower than fp32's p50 (interleaved p50s of one sequence moved up to
    # ~10% between rounds on this shared 2-core machine, so a finer bar made the choice depend on load)
    speed_veto = 1.5
    timing = {"rounds": 5, "calls": 20, "warmup": 2}
    quality_name = ""
    quality_budget = 0.0
    prefer = "dynamo"  # or "torchscript" where dynamo is known to get the graph wrong

    def __init__(self, ckpt, opts, say):
        super().__init__(ckpt, opts, say)
        torch.set_num_threads(1)
        self.module = ckpt.build_model()
        self.cfg = dict(ckpt.model_args)
        self.probes: list[dict] = self.setup()
        self.recipes = self.int8_recipes()
        self.exporter, self.fp32_quality = "", 0.0

    # ----- what a vector family declares --------------------------------------------------------------
    def setup(self) -> list[dict]:
        raise NotImplementedError

    def dummy_inputs(self) -> tuple:
        raise NotImplementedError

    def dynamic_shapes(self) -> tuple:
        raise NotImplementedError

    def quality(self, outputs: list[list[np.ndarray]]) -> float:
        raise NotImplementedError

    def family_meta(self) -> dict:
        raise NotImplementedError

    def int8_recipes(self) -> dict[str, dict]:
        """Recipe name (written to the file) -> common.quantize_int8's arguments."""
        return {"int8": {"op_types": ("MatMul", "Gemm"), "per_channel": True}}

    # ----- the pipeline's hooks -----------------------------------------------------------------------
    def export_graph(self):
        graph, self.exporter, note = to_graph(
            self.module, args=self.dummy_inputs(), input_names=list(self.input_names),
            output_names=list(self.output_names), dynamic_shapes=self.dynamic_shapes(),
            dynamic_axes=self.dynamic_axes, check=self.probes[:2], prefer=self.prefer)
        return graph, self.exporter, note

    def exact(self, m, step):
        return {"max_abs_diff": parity(m, self.module, self.probes), "tolerance": self.fp32_tol}

    def score(self, m: onnx.ModelProto) -> float:
        sess = common.session(m, threads=1)
        return self.quality([sess.run(None, f) for f in self.probes])

    def optimize(self, model, record):
        """No rewrites; scores the fp32 graph every scheme is measured against."""
        self.fp32_quality = self.score(model)
        return model

    def narrow(self, choice: Choice) -> Choice:
        return dataclasses.replace(choice, candidates=tuple(c for c in choice.candidates if c in self.recipes))

    def quantize(self, base, recipe):
        kwargs = self.recipes[recipe]
        return common.quantize_int8(base, **kwargs), {
            "scheme": recipe, "method": "onnxruntime quantize_dynamic",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}

    def check_quant(self, q, recipe):
        value = self.score(q)
        drop = self.fp32_quality - value
        figures = {self.quality_name: value, "drop": drop, "budget": self.quality_budget}
        return figures, "" if drop <= self.quality_budget else f"{self.quality_name} drops {drop:.4f} > {self.quality_budget}"

    def workload(self, name, m):
        sess, feeds = common.session(m, threads=self.opts.threads), self.probes[0]
        return lambda: sess.run(None, feeds)

    def speed_figures(self, report, seconds):
        ms = {k: v * 1e3 for k, v in seconds.items()}
        for row in report.steps:
            name = row.step.split(":", 1)[1] if row.step.startswith("quantize:") else None
            if name in ms:
                row.parity.update({"p50_ms": ms[name], "p50_ms_fp32": ms["fp32"]})
        report.extra.update({"p50_ms_per_sequence": ms, "threads": self.opts.threads,
                             self.quality_name: self.fp32_quality, "exporter": self.exporter})
        return ms

    def metadata(self, report, scheme, recipe, figures, speeds):
        fp32_diff = next(r.parity["max_abs_diff"] for r in report.steps if r.step == "simplify")
        return {**self.family_meta(), "family": self.family, "quantization": {**recipe, **figures},
                "verification": {"fp32_max_abs_diff": fp32_diff, "fp32_tolerance": self.fp32_tol,
                                 "exporter": self.exporter, self.quality_name: self.fp32_quality,
                                 "p50_ms_per_sequence": speeds, "threads": self.opts.threads,
                                 "steps": [dataclasses.asdict(s) for s in report.steps]}}
