"""Export pipeline shared by the vector families (seqae, amn): graph, parity, int8 only where measured, write.

    graph, how = to_graph(module, args=(x, lengths), input_names=[...], output_names=[...],
                          dynamic_shapes=..., dynamic_axes=..., check=[feeds])
    report = run_pipeline(graph, how, module=module, family="seqae", opts=opts, probes=[...],
                          quality=token_cosine, quality_budget=0.01, timing_feeds=feeds, meta={...})

Budgets: fp32 graphs match PyTorch within ``FP32_TOL`` (max |difference| over every output and
probe, probes of several batch sizes and lengths); int8 keeps the family's quality figure within its
budget of fp32's and must not be slower than fp32 (p50 of one sequence, ``opts.threads`` threads) to be
chosen by ``--quant auto``. Each int8 candidate is recorded as a step, chosen or not.
"""
from __future__ import annotations

import dataclasses
import io
import os
import statistics
import time

import numpy as np
import onnx
import torch

from edgekit.errors import ExportError, UsageError
from edgekit.export import common
from edgekit.export.common import ExportReport, StepRecord
from edgekit.train.common import log

FP32_TOL = 1e-4  # max |difference| against PyTorch for graphs that should be exact
SPEED_TOLERANCE = 1.10  # int8 counts as "not slower" within 10% of fp32's p50: the timings are taken one after the
# other, and p50s moved up to ~10% between runs on this shared 2-core machine; fp32 is 1.4-4x larger
QUANT_CHOICES = ("auto", "fp32", "int8", "int8-dynamic")


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
            if diff <= FP32_TOL:
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
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def interleaved_p50_ms(models: dict, session, feeds: dict, *, rounds: int = 5, calls: int = 20) -> dict[str, float]:
    """{name: p50 ms of one ``run``}: each model's p50 over ``calls`` runs, taken in ``rounds`` alternating
    rounds; the lowest round counts (the least disturbed by other work on the machine)."""
    sessions = {k: session(m) for k, m in models.items()}
    best = {k: float("inf") for k in models}
    for _ in range(rounds):
        for k, sess in sessions.items():
            best[k] = min(best[k], p50_ms(lambda: sess.run(None, feeds), rounds=calls, warmup=2))
    return best


def check_quant(quant: str, family: str) -> str:
    if quant not in QUANT_CHOICES:
        raise UsageError(f"--quant {quant} does not apply to {family} models; choose one of {', '.join(QUANT_CHOICES)}")
    return {"int8-dynamic": "int8"}.get(quant, quant)


def run_pipeline(graph: onnx.ModelProto, exporter: str, *, module, family: str, opts, probes: list[dict],
                 quality, quality_name: str, quality_budget: float, candidates: dict[str, dict],
                 timing_feeds: dict, meta: dict, exporter_note: str = "", started: float | None = None) -> ExportReport:
    """Verify, simplify, quantize where it pays, and write one self-describing .onnx file.

    ``quality(outputs_per_probe) -> float`` is the family's figure (higher is better) computed from
    onnxruntime's outputs on ``probes``; an int8 candidate may lose at most ``quality_budget`` of it.
    ``candidates`` maps int8 scheme names to ``quantize_int8`` arguments; ``--quant int8`` takes the
    smallest that passes, ``auto`` the smallest that passes and is not slower than fp32. ``started`` is
    when the caller began exporting the graph, so the export step's time includes it.
    """
    t_start = started or time.time()
    wanted = check_quant(opts.quant, family)
    say = log if opts.progress else (lambda _m: None)
    report = ExportReport(output=str(opts.out), family=family, scheme="")

    def record(step, m, t0, figures, ok, note=""):
        report.steps.append(StepRecord(step=step, bytes=common.model_bytes(m), parity=figures,
                                       seconds=time.time() - t0, ok=ok, note=note))
        say(f"[edgekit] {step}: {common._human_bytes(common.model_bytes(m))}, "
            + ", ".join(f"{k} {common._fmt(v)}" for k, v in figures.items()) + ("" if ok else f"  FAILED {note}"))

    def exact(step, m, t0, note=""):
        try:
            diff = parity(m, module, probes)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own error types: a broken graph fails verification
            diff, note = float("inf"), f"onnxruntime failed: {common.first_line(e)}"
        ok = diff <= FP32_TOL
        note = note if ok else note or f"max |difference| {diff:.2e} > {FP32_TOL:g}"
        record(step, m, t0, {"max_abs_diff": diff, "tolerance": FP32_TOL}, ok, note)
        if not ok:
            raise ExportError(f"verification failed: {step}: {note}")
        return diff

    exact(f"export ({exporter})", graph, t_start, exporter_note)
    t0 = time.time()
    simplified = common.simplify(graph)
    fp32_diff = exact("simplify", simplified, t0)

    def score(m):
        sess = common.session(m, threads=1)
        return quality([sess.run(None, f) for f in probes])

    fp32_q = score(simplified)
    built: dict[str, tuple[onnx.ModelProto, dict, float, dict]] = {}
    for name, kwargs in (candidates.items() if wanted != "fp32" else ()):
        t0 = time.time()
        q = common.quantize_int8(simplified, **kwargs)
        built[name] = (q, kwargs, t0, {quality_name: score(q)})
    # every candidate timed beside fp32 in alternating rounds, so all see the same machine load
    timings = interleaved_p50_ms({"fp32": simplified, **{k: v[0] for k, v in built.items()}},
                                 lambda m: common.session(m, threads=opts.threads), timing_feeds)
    passing: dict[str, tuple[onnx.ModelProto, dict]] = {}
    rejected: dict[str, str] = {}
    for name, (q, kwargs, t0, qual) in built.items():
        drop = fp32_q - qual[quality_name]
        figures = {**qual, "drop": drop, "budget": quality_budget, "p50_ms": timings[name],
                   "p50_ms_fp32": timings["fp32"]}
        ok = drop <= quality_budget
        note = "" if ok else f"{quality_name} drops {drop:.4f} > {quality_budget}"
        record(f"quantize:{name}", q, t0, figures, ok, note)
        if not ok:
            rejected[name] = "over its quality budget"
        elif wanted == "auto" and timings[name] > timings["fp32"] * SPEED_TOLERANCE:
            rejected[name] = "slower than fp32"
        else:
            passing[name] = (q, {"scheme": name, "method": "onnxruntime quantize_dynamic",
                                 **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}, **figures})
    if wanted == "int8" and not passing:
        raise ExportError("no int8 scheme met its quality budget; nothing written: "
                          + "; ".join(f"{k}: {v}" for k, v in rejected.items()))
    chosen = min(passing, key=lambda k: common.model_bytes(passing[k][0])) if passing else "fp32"
    final, recipe = passing[chosen] if passing else (simplified, {"scheme": "fp32"})
    if wanted == "auto":
        report.extra["auto"] = {"chosen": chosen, "rejected": rejected}
    report.scheme = chosen
    report.extra.update({"p50_ms_per_sequence": timings, "threads": opts.threads, quality_name: fp32_q,
                         "exporter": exporter})
    meta = {**meta, "family": family, "quantization": recipe,
            "verification": {"fp32_max_abs_diff": fp32_diff, "fp32_tolerance": FP32_TOL, "exporter": exporter,
                             quality_name: fp32_q, "p50_ms_per_sequence": timings, "threads": opts.threads,
                             "steps": [dataclasses.asdict(s) for s in report.steps]}}
    common.write_model(final, path=opts.out, meta=meta)
    say(f"[edgekit] wrote {opts.out} ({chosen}, {os.path.getsize(opts.out):,} bytes)")
    report.seconds = time.time() - t_start
    return report
