"""The one export pipeline: every family's export runs these stages, declared by the family's ``ExportSpec``.

    report = run(GPTExport, ckpt, ExportOptions(out="m.onnx", quant="auto"))

    resolve --quant -> export -> simplify -> optimize -> quantize (each candidate) -> verify -> time
                    -> choose -> finalize -> write (metadata + provenance)

- ``--quant`` is checked against the family's schemes before any work (export/schemes.py).
- fp32 steps must match PyTorch within ``FP32_TOL``; the export and simplify checks both run and every
  failure is reported (``ExportError("verification failed; nothing written: a; b")``).
- a quantized candidate must pass the family's quality check; ``--quant <scheme>`` fails when none of its
  recipes does, ``auto`` falls back to fp32 and says why each scheme lost.
- speed: one timer (``interleaved``: rounds alternate between the models, so machine load hits all alike;
  the lowest round's median counts), at the threads the model will run with (``--threads``, default 1).
- auto, decided by quality and size so the same checkpoint gives the same file on a quiet or a busy
  machine: among fp32 and the candidates that pass, the smallest. Speed decides only by margins that
  timing noise here does not cross, and every measurement is recorded: a candidate more than the family's
  ``speed_veto`` times slower than fp32 is rejected, and a candidate within ``size_tie`` of the smallest
  replaces it only when it is ``SPEED_MARGIN`` times faster.
- candidates are built smallest first; where the family says so (``skip_losers``: GPT on the CPU), none is
  built once one passes, so the first passing (the smallest) is chosen and no time or memory goes to the rest.
- provenance (``provenance``): the checkpoint's file name (not its path), sha256, format, iteration and
  best validation loss; ``write_model`` adds the edgekit version and the metadata format.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import onnx

from edgekit.errors import ExportError, UsageError
from edgekit.export import common
from edgekit.export.common import ExportReport, StepRecord
from edgekit.export.schemes import Choice, resolve

FP32_TOL = 1e-4  # max |difference| against PyTorch for every step that should be exact, every family
# a speed difference decides auto's choice only beyond this factor: interleaved timings of the same two
# models moved by up to ~15% between runs on a shared 2-core machine, never by 1.5x
SPEED_MARGIN = 1.5


def interleaved(fns: dict[str, Callable[[], float | None]], *, rounds: int, calls: int = 1,
                warmup: int = 1) -> dict[str, float]:
    """Seconds per call of each ``fn``, taken in ``rounds`` rounds that alternate between them; each
    round's median over ``calls`` calls, the lowest round counts (the least disturbed by other work).
    A ``fn`` that returns a number reports its own seconds (GPT: per decoded token, prefill excluded)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                own = fn()
                times.append(own if isinstance(own, float) else time.perf_counter() - t0)
            best[k] = min(best[k], statistics.median(times))
    return best


def provenance(ckpt) -> dict:
    """The one provenance block, in every family's file: where the weights came from, never an absolute path."""
    return {"source_checkpoint": os.path.basename(str(ckpt.path)), "source_sha256": ckpt.sha256,
            "source_format": ckpt.source, "source_iter": ckpt.iter_num, "source_best_val_loss": ckpt.best_val_loss}


class ExportSpec:
    """One family's export, declared: the pipeline calls these and nothing family-specific.

    A family module subclasses it, sets the class attributes and implements the hooks marked (required).
    The instance is made per export (``__init__(ckpt, opts, say)`` loads the model and its held-out probes).
    """

    family: str = ""
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    dynamic_axes: dict[str, dict[int, str]] = {}  # input/output name -> {axis: symbolic name}
    schemes: dict[str, tuple[str, ...]] = {}  # --quant word -> the recipes it builds (names written to the file)
    int8: str = ""  # what plain --quant int8 means: the family's default 8-bit scheme
    output_desc: str = "output"  # fp32 failure notes say "max |<output_desc> diff| ..."
    speed_veto: float | None = None  # auto rejects a candidate this many times slower than fp32 (None: never)
    size_tie: float = 0.0  # auto: sizes within this fraction of the smallest may be chosen for speed (SPEED_MARGIN)
    timing = {"rounds": 5, "calls": 1, "warmup": 1}  # interleaved()'s arguments for the workload
    targets: tuple[str, ...] = ("cpu",)  # --target values the family can export for (gpt: cpu, web)

    def __init__(self, ckpt, opts, say: Callable[[str], None]):
        self.ckpt, self.opts, self.say = ckpt, opts, say
        self.extra: dict = {}  # the report's family figures (ExportReport.extra)

    @property
    def fp32_tol(self) -> float:
        return FP32_TOL

    # ----- hooks ---------------------------------------------------------------------------------------
    def export_graph(self) -> tuple[onnx.ModelProto, str | None, str]:
        """(required) torch -> ONNX: (graph, exporter name shown in the step or None, note)."""
        raise NotImplementedError

    def exact(self, model: onnx.ModelProto, step: str) -> dict:
        """(required) Figures of an fp32 graph against PyTorch; must include ``max_abs_diff``."""
        raise NotImplementedError

    def optimize(self, model: onnx.ModelProto, record) -> onnx.ModelProto:
        """Optional graph rewrites after simplify, each recorded; returns the graph the schemes start from."""
        return model

    def quantize(self, base: onnx.ModelProto, recipe: str) -> tuple[onnx.ModelProto, dict]:
        """(required if the family has schemes) One recipe on ``base``: (model, recipe metadata)."""
        raise NotImplementedError

    def check_quant(self, q: onnx.ModelProto, recipe: str) -> tuple[dict, str]:
        """(required if the family has schemes) The quality check: (figures, failure note or "")."""
        raise NotImplementedError

    def workload(self, name: str, model: onnx.ModelProto) -> Callable[[], float | None]:
        """(required) One call of the family's timed workload on ``model`` (see ``interleaved``)."""
        raise NotImplementedError

    def speed_figures(self, report: ExportReport, seconds: dict[str, float]) -> dict:
        """Put the timings into the report's rows; returns the timings as the metadata stores them."""
        return seconds

    def narrow(self, choice: Choice) -> Choice:
        """The candidates this checkpoint can build (seqae: the LSTM-only recipe needs an LSTM), smallest first."""
        return choice

    def skip_losers(self) -> bool:
        """True when candidates that cannot win should not be built (large models: each costs minutes)."""
        return False

    def close(self) -> None:
        """Release what the export holds (work files, sessions), success or not."""

    def fp32_recipe(self) -> dict:
        return {"scheme": "fp32"}

    def time_fp32(self, base: onnx.ModelProto) -> bool:
        """Whether auto times fp32 beside the candidates (needed where ``speed_veto`` can reject one)."""
        return self.speed_veto is not None

    def write(self, model: onnx.ModelProto, meta: dict) -> None:
        """Write the chosen model with its metadata to ``opts.out``."""
        common.write_model(model, path=self.opts.out, meta=meta)

    def finalize(self, model: onnx.ModelProto, scheme: str, record) -> onnx.ModelProto:
        """Last rewrite of the chosen graph (GPT: the generation Loop), verified and recorded."""
        return model

    def metadata(self, report: ExportReport, scheme: str, recipe: dict, figures: dict, speeds: dict) -> dict:
        """(required) The family's metadata (provenance, version and format are added by the pipeline)."""
        raise NotImplementedError


class _Run:
    """The state of one export: the report, its rows and its failures."""

    def __init__(self, spec: ExportSpec, report: ExportReport):
        self.spec, self.report = spec, report

    def record(self, step: str, m: onnx.ModelProto, t0: float, figures: dict, ok: bool, note: str = "") -> StepRecord:
        row = StepRecord(step=step, bytes=common.model_bytes(m), parity=figures, seconds=time.time() - t0, ok=ok,
                         note=note)
        self.report.steps.append(row)
        self.spec.say(f"[edgekit] {step}: {common._human_bytes(row.bytes)}, "
                      + ", ".join(f"{k} {common._fmt(v)}" for k, v in figures.items()) + ("" if ok else f"  FAILED {note}"))
        if not ok:
            self.report.failures.append(f"{step}: {note}")
        return row

    def fail_if_any(self) -> None:
        if self.report.failures:
            raise ExportError("verification failed; nothing written: " + "; ".join(self.report.failures))

    def exact(self, step: str, m: onnx.ModelProto, t0: float, note: str = "") -> dict:
        spec = self.spec
        try:
            figures = spec.exact(m, step)
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime's own error types: a broken graph fails verification
            figures, note = {"max_abs_diff": float("inf")}, f"onnxruntime failed: {common.first_line(e)}"
        ok = figures["max_abs_diff"] <= spec.fp32_tol
        if not ok:
            note = note or f"max |{spec.output_desc} diff| {figures['max_abs_diff']:.2e} > {spec.fp32_tol:g}"
        self.record(step, m, t0, figures, ok, note)
        return figures

    def candidates(self, base: onnx.ModelProto, choice: Choice) -> dict[str, tuple[onnx.ModelProto, dict, dict, bool]]:
        """Build and check every candidate recipe: name -> (model, recipe, figures, passed) for those built.
        With ``skip_losers``, once one passes, the later (larger) recipes are not built."""
        built = {}
        for name in choice.candidates:
            passed = [common.model_bytes(v[0]) for v in built.values() if v[3]]
            if passed and self.spec.skip_losers():
                self.report.extra.setdefault("skipped", {})[name] = "cannot win: a smaller scheme passed"
                self.spec.say(f"[edgekit] {name}: not built (a smaller scheme passed; auto takes the smallest)")
                continue
            t0 = time.time()
            try:
                q, recipe = self.spec.quantize(base, name)
            except ExportError as e:  # the scheme could not be built: its row says why
                self.record(f"quantize:{name}", base, t0, {}, False, f"could not be built: {e}")
                continue
            figures, note = self.spec.check_quant(q, name)
            self.record(f"quantize:{name}", q, t0, figures, not note, note)
            built[name] = (q, recipe, figures, not note)
        return built

    def choose(self, choice: Choice, base, built: dict, seconds: dict) -> str:
        """auto: the smallest of fp32 and the passing candidates, by the rule in the module docstring;
        an explicit scheme: the smallest of its passing recipes, or the export fails."""
        spec = self.spec
        if not choice.auto:
            if choice.name == "fp32":
                return "fp32"
            if not built:
                self.report.failures = self.report.failures or [f"{choice.name} could not be built"]
                self.fail_if_any()
            return min(built, key=lambda s: common.model_bytes(built[s][0]))
        vetoed = {s for s in built if spec.speed_veto is not None and "fp32" in seconds and s in seconds
                  and seconds[s] > seconds["fp32"] * spec.speed_veto}
        sizes = {"fp32": common.model_bytes(base), **{s: common.model_bytes(built[s][0]) for s in built if s not in vetoed}}
        chosen = min(sizes, key=lambda s: (sizes[s], s))
        for s in sorted(sizes):
            if s != chosen and sizes[s] <= sizes[chosen] * (1 + spec.size_tie) and s in seconds and chosen in seconds \
                    and seconds[s] * SPEED_MARGIN < seconds[chosen]:
                chosen = s
        failed = {r.step.split(":", 1)[1]: r.note for r in self.report.steps if r.step.startswith("quantize:") and not r.ok}
        skipped = self.report.extra.get("skipped", {})
        rejected = {s: (skipped[s] if s in skipped else failed.get(s, "failed its quality budget") if s not in built
                        else f"more than {spec.speed_veto:g}x slower than fp32" if s in vetoed
                        else f"larger than {chosen}") for s in choice.candidates if s != chosen}
        if chosen != "fp32":
            rejected["fp32"] = f"larger than {chosen}"
        self.report.extra["auto"] = {"chosen": chosen, "rejected": rejected, "rule": (
            "smallest passing; a speed difference decides only beyond "
            f"{SPEED_MARGIN:g}x (within {spec.size_tie:.0%} in size)" + (f" or as a {spec.speed_veto:g}x veto against fp32"
                                                                          if spec.speed_veto else ""))}
        spec.say(f"[edgekit] auto: chose {chosen}" + (f" (rejected: {', '.join(f'{k}: {v}' for k, v in rejected.items())})"
                                                      if rejected else ""))
        return chosen


def run(spec_cls: type[ExportSpec], ckpt, opts) -> ExportReport:
    """Export ``ckpt`` as ``spec_cls`` declares, verify every step, write ``opts.out`` or raise with every failure."""
    t_start = time.time()
    choice = resolve(spec_cls.schemes, spec_cls.int8, opts.quant, family=spec_cls.family)
    if opts.target not in spec_cls.targets:
        raise UsageError(f"--target {opts.target} does not apply to {spec_cls.family} models; "
                         f"choose one of {', '.join(spec_cls.targets)}")
    say = common.progress(opts)
    spec = spec_cls(ckpt, opts, say)
    try:
        report = _stages(spec, choice, opts)
    finally:
        spec.close()
    report.seconds = time.time() - t_start
    return report


def _same_graph(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """The same computation: nodes (metadata aside) and initializers by name, in order."""
    def ops(m):
        return [(n.op_type, n.domain, list(n.input), list(n.output), [x.SerializeToString() for x in n.attribute])
                for n in m.graph.node]
    return ops(a) == ops(b) and [t.name for t in a.graph.initializer] == [t.name for t in b.graph.initializer]


def _stages(spec: ExportSpec, choice: Choice, opts) -> ExportReport:
    choice = spec.narrow(choice)
    report = ExportReport(output=str(opts.out), family=spec.family, scheme="", extra=dict(spec.extra))
    r = _Run(spec, report)
    t0 = time.time()
    graph, exporter, note = spec.export_graph()
    figures = r.exact("export" if exporter is None else f"export ({exporter})", graph, t0, note)
    t0 = time.time()
    simplified = common.simplify(graph)
    if _same_graph(graph, simplified):  # nothing changed: the export step's figures hold as they are
        r.record("simplify", simplified, t0, figures, figures["max_abs_diff"] <= spec.fp32_tol, "onnxsim changed nothing")
    else:
        r.exact("simplify", simplified, t0)
    r.fail_if_any()
    base = spec.optimize(simplified, r.record)
    report.failures.clear()  # a skipped or rejected optimization is reported but does not fail the export
    built = r.candidates(base, choice)
    passing = {k: v[:3] for k, v in built.items() if v[3]}
    # passing candidates (and fp32 where the family times it) in alternating rounds, at the user's threads
    models = {**({"fp32": base} if spec.time_fp32(base) else {}), **{k: v[0] for k, v in passing.items()}}
    seconds = interleaved({k: spec.workload(k, m) for k, m in models.items()}, **spec.timing) if models else {}
    speeds = spec.speed_figures(report, seconds)
    scheme = r.choose(choice, base, passing, seconds)
    final, recipe, figures = (base, spec.fp32_recipe(), {}) if scheme == "fp32" else passing[scheme]
    report.scheme = scheme
    final = spec.finalize(final, scheme, r.record)
    report.failures = [f for f in report.failures if not f.startswith("quantize:")]
    r.fail_if_any()
    meta = {**spec.metadata(report, scheme, recipe, figures, speeds), **provenance(spec.ckpt)}
    spec.write(final, meta)
    return report
