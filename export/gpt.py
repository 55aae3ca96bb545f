"""GPT export spec: one prefill+decode KV-cache graph, simplified, fused, quantized, verified at every step.

    report = export(load_checkpoint("runs/p3/phase3.pt"), ExportOptions(out="phase3.onnx", quant="auto"))
    print(report.table())

The stages are the one pipeline's (export/pipeline.py); this module declares GPT's part of them. The graph
lives in gpt_graph.py, the schemes in gpt_quant.py, the probes and checks in gpt_verify.py.

Budgets (issue: export that deployers trust): fp32 steps keep max |logit difference| <= pipeline.FP32_TOL
against PyTorch; quantized graphs keep the held-out loss within 1% and greedy top-1 agreement >= 95%
(teacher forced on PyTorch's own greedy continuations of at least 8 prompts x 32 tokens). ``quant="auto"``
picks the smallest scheme that passes and is not slower than fp32 at decoding on this CPU.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time

import numpy as np
import onnx
import torch

from edgekit.export import common, gpt_verify, gpt_web, pipeline
from edgekit.export.common import ExportReport
from edgekit.export.gpt_graph import _sampler_nodes, optimize, prepare_model, to_graph  # noqa: F401 (tests import them here)
from edgekit.export.gpt_quant import SCHEMES, Int4Search, quantize
from edgekit.export.gpt_verify import check, loop_check, make_probes, verification_data, within_budget
from edgekit.options import ExportOptions
from edgekit.runtime.gpt import GPTModel, SamplingOptions
from edgekit.runtime.modelcard import FORMAT_VERSION, ModelCard
from edgekit.runtime.tokenizer import from_spec
from edgekit.train.checkpoint import Checkpoint

SIZE_TIE = 0.05  # auto: files within 5% of the smallest are "as small"; the fastest of them wins
SPEED_NOISE = 0.03  # "not slower than fp32": decode time per token within 3% counts as equal on a noisy machine
FUSION_NOISE = 0.11  # fusions cut the node count ~40%; only a clear (>10% fewer tokens/s) slowdown rejects them
DECODE_TOKENS = 48  # the timed workload: greedy decode of this many tokens after an 8-token prompt


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
    speed_noise = SPEED_NOISE
    size_tie = SIZE_TIE
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
            self.speed_noise = gpt_web.SPEED_NOISE
            self._tmp = tempfile.TemporaryDirectory(prefix="edgekit-web-")
        torch.set_num_threads(opts.torch_threads())
        self.model, self.cfg = prepare_model(ckpt)
        self.tok_spec = ckpt.tokenizer or {"kind": "gpt2"}
        if self.web:
            self.tok_spec = gpt_web.tokenizer(self.tok_spec)
        self.tok = from_spec(self.tok_spec)
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
        # choose on the first half of val, report on the second
        self.probe, self.report_probe = make_probes(self.model, self.val)
        self.calib = np.stack([train[s:s + block] for s in np.linspace(0, len(train) - block - 1, 16).astype(int)])
        self.meta = {"family": "gpt", "config": self.cfg, "vocab_size": self.tok.n_vocab, "tokenizer": self.tok_spec,
                     "special_tokens": {"eot": self.tok.eot_id}, "block_size": block,
                     "generation": {"max_new_tokens": 64, "temperature": 0.0},
                     "window": {"keep": block - block // 4}}
        self.card = ModelCard.from_dict({"format": FORMAT_VERSION, **self.meta}, path=str(ckpt.path))  # the engines' card
        self.threads = opts.threads
        self.extra = {"verification_data": info, "threads": {"torch": torch.get_num_threads(), "onnxruntime": self.threads}}
        self._engines: dict[int, tuple[onnx.ModelProto, GPTModel]] = {}
        self._select: dict[str, dict] = {}

    def engine(self, m: onnx.ModelProto) -> GPTModel:
        """One onnxruntime session per graph, reused by the checks and the timer."""
        if id(m) not in self._engines:
            self._engines[id(m)] = (m, GPTModel(common.session(m, threads=self.threads), self.card, threads=self.threads))
        return self._engines[id(m)][1]

    def export_graph(self):
        return to_graph(self.model), None, ""

    def exact(self, m, step):
        return {"max_abs_diff": check(self.engine(m), self.probe)["max_abs_diff"]}

    def optimize(self, simplified, record):
        """onnxruntime's transformer fusions, kept when exact and not clearly slower at decoding."""
        t0 = time.time()
        try:
            fused = optimize(simplified, self.cfg)
            common.check_dynamic(simplified, fused, step="optimize")
            diff = check(self.engine(fused), self.probe)["max_abs_diff"]
            secs = pipeline.interleaved({"before": self.workload("fp32", simplified),
                                         "after": self.workload("fp32", fused)}, rounds=3)
            ok = diff <= self.fp32_tol
            keep = ok and pipeline.not_slower(secs["after"], secs["before"], FUSION_NOISE)
            note = "" if ok else f"max |logit diff| {diff:.2e} > {self.fp32_tol:g}; fusions skipped"
            record("optimize", fused, t0, {"max_abs_diff": diff, "nodes_before": len(simplified.graph.node),
                                           "nodes_after": len(fused.graph.node), "tok_s_before": round(1 / secs["before"]),
                                           "tok_s_after": round(1 / secs["after"]), "kept": keep}, True, note)
            return fused if keep else simplified
        except Exception as e:  # noqa: BLE001 - the fusions are optional: report why, keep the simplified graph
            record("optimize", simplified, t0, {"kept": False}, True, f"skipped: {common.first_line(e)}")
            return simplified

    def narrow(self, choice):
        """web: the schemes wasm computes as verified; cpu: auto leaves out int8-weights (the web's scheme)."""
        if self.web:
            return gpt_web.narrow(choice)
        return dataclasses.replace(choice, candidates=tuple(s for s in choice.candidates if s != gpt_web.INT8_WEIGHTS)) \
            if choice.auto else choice

    def quantize(self, base, recipe):
        if recipe == gpt_web.INT8_WEIGHTS:
            q, meta = gpt_web.int8_weights(base)
        elif recipe != "int4":
            q, meta = quantize(base, scheme=recipe, calib=self.calib, cfg=self.cfg)
        if recipe != "int4":
            q, meta = (gpt_web.browser_numerics(q), gpt_web.recipe(meta)) if self.web else (q, meta)
            self._recipes[recipe] = meta
            if meta.get("session_config"):  # checked and timed in a session made as the file's readers make it
                card = self._card(meta)
                self._engines[id(q)] = (q, GPTModel(common.session(q, threads=self.threads, config=dict(
                    card.deploy.session_config)), card, threads=self.threads))
            return q, meta

        def measure(m):  # a session per trial, not kept: the search tries one mix per weight
            m = gpt_web.browser_numerics(m) if self.web else m
            e = GPTModel(common.session(m, threads=self.threads), self.card, threads=self.threads)
            return e, check(e, self.probe)

        q, meta, eng, f = Int4Search(base).run(measure)
        if self.web:
            q, meta = gpt_web.browser_numerics(q), gpt_web.recipe(meta)
        self._engines[id(q)] = (q, eng)
        self._select[recipe] = f  # the search already checked its pick on the select half
        self._four_bit_share = meta["four_bit_weight_share"]
        return q, meta

    def check_quant(self, q, recipe):
        """The budget must hold on both halves; the figures reported (and stored) are the report half's,
        which no choice was tuned on (int4's search tuned on the select half)."""
        eng = self.engine(q)
        f = self._select.pop(recipe, None) or check(eng, self.probe)
        r = check(eng, self.report_probe)
        ok = within_budget(f) and within_budget(r)
        bad = f if not within_budget(f) else r
        note = "" if ok else (f"val loss {bad['val_loss_delta_pct']:+.2f}% (budget {gpt_verify.VAL_LOSS_DELTA_PCT}%), "
                              f"greedy agreement {bad['greedy_agreement']:.3f} (budget {gpt_verify.GREEDY_AGREEMENT}) "
                              f"on the {'select' if bad is f else 'report'} half")
        figs = {"val_loss_delta_pct": r["val_loss_delta_pct"], "greedy_agreement": r["greedy_agreement"],
                "max_abs_diff": r["max_abs_diff"], "select_val_loss_delta_pct": f["val_loss_delta_pct"],
                "select_greedy_agreement": f["greedy_agreement"]}
        if recipe == "int4":
            figs["four_bit_weight_share"] = self._four_bit_share
        return figs, note

    def workload(self, name, m):
        """Greedy decode of DECODE_TOKENS tokens; the runtime's own decode rate, so seconds per decoded token."""
        prompt = [int(t) for t in self.val[:8]]
        if self.web:
            config = self._recipes.get(name, {}).get("session_config", {})
            return gpt_web.wasm_workload(m, meta={**self.meta, "deploy": {"target": "web", "session_config": config}},
                                         prompt_ids=prompt, tokens=DECODE_TOKENS, workdir=self._tmp.name,
                                         timer=self._timer)
        e = self.engine(m)
        opts = SamplingOptions(max_new_tokens=DECODE_TOKENS, heal=False)
        return lambda: 1.0 / e.run([prompt], opts)[0].tokens_per_s

    def speed_figures(self, report, seconds):
        speeds = {k: 1.0 / v for k, v in seconds.items()}
        report.extra["decode_tokens_per_s"] = speeds
        where = "in onnxruntime-web (wasm, Node), " if self.web else ""
        self.say(f"[edgekit] decode tokens/s ({where}1 prompt, {DECODE_TOKENS} tokens, best of {self.timing['rounds']}): "
                 + ", ".join(f"{k} {v:,.0f}" for k, v in speeds.items()))
        return speeds

    def _card(self, recipe: dict) -> ModelCard:
        """The engines' card, with the session entries ``recipe`` asks readers for."""
        if not recipe.get("session_config"):
            return self.card
        return ModelCard.from_dict({**self.card.to_dict(), "deploy": {"session_config": recipe["session_config"]}})

    def finalize(self, m, scheme, record):
        if self.web:
            self._timer.close()  # the timing is over
        card = self._card(self._recipes.get(scheme, {}))
        return loop_check(m, self.engine(m), self.probe, card, self.threads, self.tok.eot_id, record)

    def metadata(self, report: ExportReport, scheme, recipe, figures, speeds):
        n = len(self.val)
        deploy = {"target": "web", "numerics": gpt_web.NUMERICS[scheme]} if self.web else \
            {"target": "cpu", "numerics": "onnxruntime CPU"}
        if recipe.get("session_config"):
            deploy["session_config"] = recipe["session_config"]
        return {**self.meta, "quantization": recipe, "deploy": deploy, "verification": {
            "steps": [dataclasses.asdict(s) for s in report.steps], "final": figures,
            "torch_val_loss": self.report_probe.torch_loss, "decode_tokens_per_s": speeds,
            "decode_timed_in": "onnxruntime-web wasm in Node, 1 thread" if self.web else "onnxruntime CPU",
            "data": self.data_info,
            "auto": report.extra.get("auto"),
            "slices": {"select": f"held-out tokens [0, {n // 2}): int4's search and which schemes pass (auto's choice)",
                       "report": f"held-out tokens [{n // 2}, {n}): every figure reported (val_loss_delta_pct, "
                                 "greedy_agreement); the budget must hold here too"},
            "budgets": {"fp32_max_abs_diff": self.fp32_tol, "val_loss_delta_pct": gpt_verify.VAL_LOSS_DELTA_PCT,
                        "greedy_agreement": gpt_verify.GREEDY_AGREEMENT}}}


def export(ckpt: Checkpoint, opts: ExportOptions) -> ExportReport:
    return pipeline.run(GPTExport, ckpt, opts)
