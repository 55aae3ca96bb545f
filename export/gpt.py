"""GPT export: one prefill+decode KV-cache graph, simplified, fused, quantized, verified at every step.

    report = export(load_checkpoint("runs/p3/phase3.pt"), ExportOptions(out="phase3.onnx", quant="auto"))
    print(report.table())

Budgets (issue: export that deployers trust): fp32 steps keep max |logit difference| <= 1e-4 against
PyTorch; quantized graphs keep the held-out loss within 1% and greedy top-1 agreement >= 95% (teacher
forced on PyTorch's own greedy continuations of at least 8 prompts x 32 tokens). ``quant="auto"``
picks the smallest scheme that passes and is not slower than fp32 at decoding on this CPU.
"""
from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time

import numpy as np
import onnx
import torch
from torch.nn import functional as F

from edgekit.errors import ExportError
from edgekit.export import common, rewrites
from edgekit.export.common import ExportReport, StepRecord
from edgekit.models.gpt import GPT
from edgekit.options import ExportOptions
from edgekit.runtime.gpt import GPTModel, SamplingOptions
from edgekit.runtime.tokenizer import from_spec
from edgekit.train.checkpoint import Checkpoint
from edgekit.train.common import log

FP32_TOL = 1e-4  # max |logit difference| for graph rewrites that should be exact
VAL_LOSS_DELTA_PCT = 1.0  # quantized: held-out loss may grow at most 1%
GREEDY_AGREEMENT = 0.95  # quantized: top-1 agreement with PyTorch, teacher forced
SPEED_TOLERANCE = 0.97  # "not slower than fp32": within 3% counts as equal on a noisy machine
SIZE_TIE = 0.05  # auto: files within 5% of the smallest are "as small"; the fastest of them wins
FUSION_NOISE = 0.9  # fusions cut the node count ~40%; only a clear (>10%) slowdown rejects them
SCHEMES = ("int4", "int8-dynamic", "int8-nbits", "int8-static")  # auto's candidates


class _MatMulLinear(torch.nn.Module):
    """nn.Linear as ``x @ W^T + b``: exports as one MatMul on (B, T, C) without the reshapes to 2-D."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight_t = torch.nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x):
        y = x @ self.weight_t
        return y if self.bias is None else y + self.bias


class _CachedLM(torch.nn.Module):
    """forward(input_ids, attention_mask, *past) -> (logits, *present) for torch.onnx.export."""

    def __init__(self, model: GPT):
        super().__init__()
        import copy

        model = copy.deepcopy(model)
        for block in model.transformer.h:  # every Linear but the tied LM head
            for parent, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"), (block.mlp, "c_proj")):
                setattr(parent, name, _MatMulLinear(getattr(parent, name)))
        self.model = model

    def forward(self, input_ids, attention_mask, *past):
        logits, present = self.model.forward_cached(input_ids, attention_mask, list(past), fused=True)
        return (logits, *present)


def _register_mha_schema() -> None:
    """Tell onnx (and so onnxscript) the signature of onnxruntime's contrib MultiHeadAttention."""
    from onnx.defs import OpSchema

    if onnx.defs.has("MultiHeadAttention", "com.microsoft"):
        return
    F = OpSchema.FormalParameterOption
    T = [("T", ["tensor(float)", "tensor(float16)"], "float tensors"), ("M", ["tensor(int32)"], "mask")]
    names = ["query", "key", "value", "bias", "key_padding_mask", "attention_bias", "past_key", "past_value"]
    types = ["T", "T", "T", "T", "M", "T", "T", "T"]
    inputs = [OpSchema.FormalParameter(n, t, param_option=F.Single if i == 0 else F.Optional)
              for i, (n, t) in enumerate(zip(names, types))]
    outputs = [OpSchema.FormalParameter("output", "T"),
               OpSchema.FormalParameter("present_key", "T", param_option=F.Optional),
               OpSchema.FormalParameter("present_value", "T", param_option=F.Optional)]
    attrs = [OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "heads", required=True),
             OpSchema.Attribute("unidirectional", OpSchema.AttrType.INT, "causal", required=False)]
    onnx.defs.register_schema(OpSchema("MultiHeadAttention", "com.microsoft", 1, inputs=inputs, outputs=outputs,
                                       type_constraints=T, attributes=attrs))


def _attention_to_onnx():
    """edgekit::cached_attention -> onnxruntime's fused com.microsoft MultiHeadAttention (causal, with past).

    One kernel per layer instead of the ~25 reshape/transpose/concat/softmax nodes the plain
    attention exports to: per-node dispatch, not arithmetic, dominates these small models' decode.
    """
    import onnxscript
    from onnxscript import opset18 as op

    _register_mha_schema()
    msft = onnxscript.values.Opset("com.microsoft", 1)

    def cached_attention(q, k, v, mask, past_k, past_v, num_heads: int):
        out, present_k, present_v = msft.MultiHeadAttention(
            q, k, v, None, op.Cast(mask, to=onnx.TensorProto.INT32), None, past_k, past_v,
            num_heads=num_heads, unidirectional=1, _num_outputs=3)
        return out, present_k, present_v

    return {torch.ops.edgekit.cached_attention.default: cached_attention}


def io_names(n_layer: int) -> tuple[list[str], list[str]]:
    past = [f"past.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    return past, present


def prepare_model(ckpt: Checkpoint) -> tuple[GPT, dict]:
    """The checkpoint's model, its lm head trimmed to the tokenizer (nanoGPT pads GPT-2's 50,257 to 50,304)."""
    model = ckpt.build_model()
    tok = from_spec(ckpt.tokenizer or {"kind": "gpt2"})
    cfg = model.config
    if tok.n_vocab > cfg.vocab_size:
        raise ExportError(f"tokenizer has {tok.n_vocab} ids but the model only {cfg.vocab_size}; wrong --meta?")
    if tok.n_vocab < cfg.vocab_size:
        trimmed = GPT(dataclasses.replace(cfg, vocab_size=tok.n_vocab))
        state = {k: (v[: tok.n_vocab] if k in ("transformer.wte.weight", "lm_head.weight") else v)
                 for k, v in model.state_dict().items()}
        trimmed.load_state_dict(state)
        model = trimmed.eval()
    return model, model.config.to_dict()


def to_graph(model: GPT) -> onnx.ModelProto:
    """torch.onnx.export (dynamo) of the KV-cache step with dynamic batch, sequence and past."""
    cfg = model.config
    hs = cfg.n_embd // cfg.n_head
    past_names, present_names = io_names(cfg.n_layer)
    B, T, P = 2, 3, 2
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    mask = torch.ones(B, P + T, dtype=torch.long)
    past = tuple(torch.randn(B, cfg.n_head, P, hs) * 0.1 for _ in past_names)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=1, max=cfg.block_size)
    plen = torch.export.Dim("past_sequence", min=0, max=cfg.block_size)
    dyn = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: torch.export.Dim.AUTO},
           "past": tuple({0: batch, 2: plen} for _ in past_names)}
    m = common.to_onnx(_CachedLM(model).eval(), args=(ids, mask, *past), input_names=["input_ids", "attention_mask", *past_names],
                       output_names=["logits", *present_names], dynamic_shapes=dyn,
                       custom_translation_table=_attention_to_onnx())
    # the exporter names derived dims (P+T) itself; give them stable names
    for vi in list(m.graph.input) + list(m.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param and d.dim_param not in ("batch", "sequence", "past_sequence"):
                d.dim_param = "total_sequence"
    return m


def untie_head(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give the LM head its own (C, V) initializer as a plain MatMul, so quantizers can reach it.

    Tied weights reach the head as Gemm(transB=1) or MatMul(Transpose(wte)); onnxruntime's quantizers
    only quantize MatMuls whose weight is an initializer, and a head left in fp32 is the slow path.
    The head is the projection that reads the token embedding's own initializer (the table the
    ``input_ids`` Gather reads), whatever the vocabulary size: a character model's 65 x 384 head is
    as much the head as GPT-2's 50,257 x 96 one.
    """
    m = _copy(model)
    inits = {i.name: i for i in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    wte = next((n.input[0] for n in m.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids"
                and n.input[0] in inits), None)
    if wte is None:
        raise ExportError("could not find the token embedding (a Gather of input_ids) to untie the LM head from")
    for node in m.graph.node:
        if node.op_type == "Gemm" and len(node.input) == 2 and node.input[1] == wte:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transB", 0) != 1 or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
                continue
        elif not (node.op_type == "MatMul" and node.input[1] in producers
                  and producers[node.input[1]].op_type == "Transpose" and producers[node.input[1]].input[0] == wte):
            continue
        w = onnx.numpy_helper.to_array(inits[wte])  # (V, C)
        name = "lm_head.weight_t"
        m.graph.initializer.append(onnx.numpy_helper.from_array(np.ascontiguousarray(w.T), name))
        new = onnx.helper.make_node("MatMul", [node.input[0], name], list(node.output), name="lm_head_matmul")
        idx = list(m.graph.node).index(node)
        m.graph.node.remove(node)
        m.graph.node.insert(idx, new)
        return _prune(m)
    raise ExportError("could not find the LM head (Gemm/MatMul on the token embedding) to untie")


_copy = rewrites.copy_model


def _prune(m: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes and initializers nothing uses any more."""
    needed = {o.name for o in m.graph.output}
    keep = []
    for node in reversed(list(m.graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del m.graph.node[:]
    m.graph.node.extend(reversed(keep))
    inits = [i for i in m.graph.initializer if i.name in needed]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    return m


def optimize(model: onnx.ModelProto, cfg: dict) -> onnx.ModelProto:
    """onnxruntime's transformer optimizer (LayerNorm/SkipLayerNorm/Gelu/BiasGelu fusions)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model = rewrites.zero_layernorm_bias(model)  # a copy: the optimizer edits its input in place
    with common._quiet():
        opts = FusionOptions("gpt2")
        opts.enable_attention = False  # edgekit's attention pattern is not HF GPT-2's; keep it exact
        opt = optimize_model(model, model_type="gpt2", num_heads=cfg["n_head"], hidden_size=cfg["n_embd"],
                             optimization_options=opts, opt_level=0, use_gpu=False, only_onnxruntime=False)
    m = rewrites.fuse_residual_layernorm(rewrites.fold_attention_bias(opt.model))
    if not any(o.domain == "com.microsoft" for o in m.opset_import):  # fused ops live in onnxruntime's domain
        m.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return m


# ----- the single-call generation loop ---------------------------------------------------------------
def _sampler_nodes(p: str, logits: str, token: str) -> list[onnx.NodeProto]:
    """The in-graph sampler: repetition penalty, top-k, temperature, top-p and an inverse-CDF draw.

    Reads (from the enclosing graph) ``temperature`` and ``top_p`` (float scalars), ``top_k`` (int64
    (1,)), ``repeat_penalty`` (float scalar), and from the loop state ``recent_ids`` (B, N) and the
    step's uniform ``u`` (B,). Writes ``token`` (B, 1) int64. Greedy is the same path with top_k 1
    (TopK keeps the lower index on ties, as ArgMax does). The draw runs over the k survivors sorted
    by descending probability: ``count(cumsum(p) < u * sum(p))`` (runtime.gpt.sample_next mirrors it).
    Repetition penalty as llama.cpp's: a logit of a token among the last N is divided by the penalty
    when positive, multiplied when not, once per distinct token (duplicates scatter the same value).
    """
    from onnx import TensorProto as TP
    from onnx import helper as h

    def const(name, dtype, dims, vals):
        return h.make_node("Constant", [], [name], value=h.make_tensor(name, dtype, dims, vals))

    outer = {"temperature", "top_k", "top_p", "repeat_penalty"}  # read from the enclosing graph

    def n(op, ins, outs, **kw):
        return h.make_node(op, [x if x in outer else p + x for x in ins], [p + o for o in outs], **kw)

    return [
        h.make_node("GatherElements", [logits, p + "recent_ids"], [p + "seen"], axis=1),  # (B, N)
        const(p + "f0", TP.FLOAT, [], [0.0]),
        n("Greater", ["seen", "f0"], ["seen_pos"]),
        n("Div", ["seen", "repeat_penalty"], ["seen_div"]),
        n("Mul", ["seen", "repeat_penalty"], ["seen_mul"]),
        n("Where", ["seen_pos", "seen_div", "seen_mul"], ["seen_new"]),
        h.make_node("ScatterElements", [logits, p + "recent_ids", p + "seen_new"], [p + "penalized"], axis=1),
        n("TopK", ["penalized", "top_k"], ["kv", "ki"], axis=-1, largest=1, sorted=1),  # (B, k) each
        n("Div", ["kv", "temperature"], ["kz"]),
        n("Softmax", ["kz"], ["kp"], axis=-1),
        const(p + "ax1", TP.INT64, [], [1]),
        n("CumSum", ["kp", "ax1"], ["kc"]),
        n("Sub", ["kc", "kp"], ["before"]),
        n("Less", ["before", "top_p"], ["keep"]),  # nucleus: always keeps the most likely token
        n("Where", ["keep", "kp", "f0"], ["kq"]),
        n("CumSum", ["kq", "ax1"], ["kc2"]),
        const(p + "ax1v", TP.INT64, [1], [1]),
        n("ReduceMax", ["kc2", "ax1v"], ["total"], keepdims=1),  # (B, 1)
        n("Unsqueeze", ["u", "ax1v"], ["u2"]),  # (B, 1)
        n("Mul", ["u2", "total"], ["thr"]),
        n("Less", ["kc2", "thr"], ["below"]),
        n("Cast", ["below"], ["below_i"], to=TP.INT64),
        n("ReduceSum", ["below_i", "ax1v"], ["pick"], keepdims=1),  # (B, 1)
        const(p + "i1", TP.INT64, [], [1]),
        n("Sub", ["top_k", "i1"], ["kmax"]),
        n("Min", ["pick", "kmax"], ["pick_c"]),
        h.make_node("GatherElements", [p + "ki", p + "pick_c"], [token], axis=1),  # (B, 1)
    ]


def wrap_loop(step: onnx.ModelProto, *, eot: int | None) -> onnx.ModelProto:
    """Put the decode step and the sampler inside an ONNX ``Loop``, so a generation is one onnxruntime call.

    The file keeps the step's inputs and outputs and adds the inputs ``steps`` (int64 scalar),
    ``uniforms`` (steps, B) float, one draw in [0, 1) per pass and row (numpy draws them from the
    seed, so sampling stays repeatable), ``temperature``, ``top_p`` and ``repeat_penalty`` (float
    scalars), ``top_k`` (int64 (1,)) and ``recent_ids`` (B, N), the last N context tokens the
    repetition penalty looks at, and one output, ``tokens`` (k, B). Pass 1 consumes ``input_ids``,
    every later pass the previous pass's token, so ``tokens[i]`` is the token after pass i (greedy:
    top_k 1, temperature 1, top_p 1, penalty 1); the loop stops early once every row's token is
    ``eot``, and the presents are those after the last pass. ``steps=1`` is the plain step and
    returns ``logits`` (1, B, V); for ``steps>1`` ``logits`` is (k, B, 0): copying 50k logits out of
    every pass cost more than the loop saved. The Loop sits at the top level on purpose: nested in an
    ``If`` it ran 4x slower here. The weights stay in the outer graph and the body reads them from the
    enclosing scope, so the file grows only by a few nodes.
    """
    from onnx import TensorProto as TP
    from onnx import helper as h

    g = step.graph
    in_names = [i.name for i in g.input]
    out_names = [o.name for o in g.output]
    if in_names[:2] != ["input_ids", "attention_mask"] or out_names[0] != "logits":
        raise ExportError(f"unexpected step graph signature {in_names[:2]} -> {out_names[:1]}")
    past, present = in_names[2:], out_names[1:]

    def renamed(pre: str, mapping: dict[str, str]) -> list[onnx.NodeProto]:
        """The step's nodes with every internal name prefixed (subgraphs may not shadow outer names)
        and its graph inputs and outputs mapped as given."""
        nodes = []
        for node in g.node:
            n = onnx.NodeProto()
            n.CopyFrom(node)
            n.input[:] = [mapping.get(x, pre + x) if x else x for x in n.input]
            n.output[:] = [mapping.get(x, pre + x) if x else x for x in n.output]
            if n.name:
                n.name = pre + n.name
            nodes.append(n)
        return nodes

    def const(name, dtype, dims, vals):
        return h.make_node("Constant", [], [name], value=h.make_tensor(name, dtype, dims, vals))

    inits = {i.name for i in g.initializer}
    keep = {n: n for n in inits}  # weights come from the outer scope under their own names
    vi = lambda n, t=TP.FLOAT: h.make_tensor_value_info(n, t, None)  # noqa: E731

    p = "loop."
    body_nodes = renamed(p, {**keep, **{n: p + n for n in in_names}, "logits": p + "logits"})
    body_nodes += [h.make_node("Gather", ["uniforms", p + "iter"], [p + "u"], axis=0)]  # (B,)
    body_nodes += _sampler_nodes(p, p + "logits", p + "next")  # (B, 1)
    body_nodes += [
        h.make_node("Shape", [p + "next"], [p + "b1"]),
        h.make_node("ConstantOfShape", [p + "b1"], [p + "ones"], value=h.make_tensor("one", TP.INT64, [1], [1])),
        h.make_node("Concat", [p + "attention_mask", p + "ones"], [p + "mask_out"], axis=1),
        const(p + "axis1", TP.INT64, [1], [1]),
        const(p + "int_max", TP.INT64, [1], [2**62]),
        h.make_node("Slice", [p + "recent_ids", p + "axis1", p + "int_max", p + "axis1"], [p + "recent_tail"]),
        h.make_node("Concat", [p + "recent_tail", p + "next"], [p + "recent_out"], axis=1),
        h.make_node("Squeeze", [p + "next", p + "axis1"], [p + "token"]),  # (B,)
        const(p + "eot", TP.INT64, [], [-1 if eot is None else int(eot)]),
        h.make_node("Equal", [p + "token", p + "eot"], [p + "is_eot"]),
        h.make_node("Cast", [p + "is_eot"], [p + "is_eot_i"], to=TP.INT64),
        h.make_node("ReduceMin", [p + "is_eot_i"], [p + "all_eot"], keepdims=0),
        h.make_node("Cast", [p + "all_eot"], [p + "all_eot_b"], to=TP.BOOL),
        h.make_node("Not", [p + "all_eot_b"], [p + "cond_out"]),
        # logits leave the loop only for a single step: (B, V) when steps == 1, (B, 0) otherwise
        const(p + "zero", TP.INT64, [1], [0]),
        h.make_node("Slice", [p + "logits", p + "zero", "logits_width", p + "axis1"], [p + "logits_out"]),
    ]
    body = h.make_graph(
        body_nodes, "decode_step",
        [h.make_tensor_value_info(p + "iter", TP.INT64, []), h.make_tensor_value_info(p + "cond", TP.BOOL, []),
         vi(p + "input_ids", TP.INT64), vi(p + "attention_mask", TP.INT64), vi(p + "recent_ids", TP.INT64)]
        + [vi(p + n) for n in past],
        [h.make_tensor_value_info(p + "cond_out", TP.BOOL, []), vi(p + "next", TP.INT64), vi(p + "mask_out", TP.INT64),
         vi(p + "recent_out", TP.INT64)]
        + [vi(p + n) for n in present] + [vi(p + "token", TP.INT64), vi(p + "logits_out")])
    outer_nodes = [
        const("one", TP.INT64, [], [1]),
        h.make_node("Equal", ["steps", "one"], ["single_step"]),
        h.make_node("Cast", ["single_step"], ["single_step_i"], to=TP.INT64),
        const("all_columns", TP.INT64, [1], [2**62]),
        h.make_node("Mul", ["single_step_i", "all_columns"], ["logits_width"]),
        const("true", TP.BOOL, [], [True]),
        h.make_node("Loop", ["steps", "true", "input_ids", "attention_mask", "recent_ids", *past],
                    ["last_ids", "last_mask", "last_recent", *present, "tokens", "logits"], body=body, name="generate"),
    ]
    inputs = list(g.input) + [h.make_tensor_value_info("steps", TP.INT64, []),
                              h.make_tensor_value_info("uniforms", TP.FLOAT, ["steps", "batch"]),
                              h.make_tensor_value_info("temperature", TP.FLOAT, []),
                              h.make_tensor_value_info("top_k", TP.INT64, [1]),
                              h.make_tensor_value_info("top_p", TP.FLOAT, []),
                              h.make_tensor_value_info("repeat_penalty", TP.FLOAT, []),
                              h.make_tensor_value_info("recent_ids", TP.INT64, ["batch", "recent"])]
    outputs = [h.make_tensor_value_info("logits", TP.FLOAT, ["steps_run", "batch", "logits_width"])]
    outputs += list(g.output)[1:] + [h.make_tensor_value_info("tokens", TP.INT64, ["steps_run", "batch"])]
    graph = h.make_graph(outer_nodes, g.name or "edgekit_gpt", inputs, outputs, list(g.initializer))
    m = h.make_model(graph, opset_imports=list(step.opset_import), ir_version=step.ir_version,
                     producer_name=step.producer_name)
    m.doc_string = step.doc_string
    onnx.checker.check_model(m)
    return m


# ----- verification ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Probe:
    """Fixed held-out inputs every step is checked on."""

    windows: torch.Tensor  # (N, L) val token windows for loss and logits
    torch_logits: torch.Tensor  # (N, L, V) PyTorch reference
    torch_loss: float
    prompts: torch.Tensor  # (M, p) prompt ids
    greedy: torch.Tensor  # (M, p + n) PyTorch greedy continuations


def make_probes(model: GPT, val: np.ndarray) -> tuple[Probe, Probe]:
    """Two probes on disjoint halves of the held-out tokens: ``select`` for the choices (int4's search,
    which schemes pass for auto), ``report`` for the figures written to the report and the file, so the
    reported figures are not the ones the choice was made on."""
    half = len(val) // 2
    return make_probe(model, val[:half]), make_probe(model, val[half:])


def make_probe(model: GPT, val: np.ndarray, *, n_windows: int = 8) -> Probe:
    cfg = model.config
    L = min(cfg.block_size, 64, len(val) - 1)
    starts = np.linspace(0, len(val) - L - 1, n_windows).astype(int)
    windows = torch.from_numpy(np.stack([val[s:s + L + 1] for s in starts]).astype(np.int64))
    with torch.no_grad():
        logits, _ = model(windows[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1)).item()
    p = min(8, cfg.block_size // 4)
    n = min(32, cfg.block_size - p)
    m = max(8, math.ceil(256 / n))  # at least 8 prompts and 256 compared tokens
    pstarts = np.linspace(0, len(val) - p - 1, m).astype(int)
    seqs = torch.from_numpy(np.stack([val[s:s + p] for s in pstarts]).astype(np.int64))
    with torch.no_grad():
        for _ in range(n):
            nxt = model(seqs)[0][:, -1].argmax(-1, keepdim=True)
            seqs = torch.cat([seqs, nxt], dim=1)
    return Probe(windows, logits, loss, seqs[:, :p], seqs)


def within_budget(f: dict) -> bool:
    return f["val_loss_delta_pct"] <= VAL_LOSS_DELTA_PCT and f["greedy_agreement"] >= GREEDY_AGREEMENT


def _engine(model: onnx.ModelProto, meta: dict, threads: int) -> GPTModel:
    return GPTModel(common.session(model, threads=threads), meta, threads=threads)


def check(engine: GPTModel, probe: Probe) -> dict:
    """Max |logit diff|, held-out loss delta (%) and greedy agreement of the graph against PyTorch."""
    x = probe.windows[:, :-1].numpy()
    y = probe.windows[:, 1:].numpy()
    N, L = x.shape
    past = engine.empty_past(N)
    mask = np.zeros((N, 0), dtype=np.int64)
    max_diff, nll = 0.0, 0.0
    for t in range(L):
        mask = np.concatenate([mask, np.ones((N, 1), dtype=np.int64)], axis=1)
        logits, past = engine.step(x[:, t:t + 1].copy(), mask, past)
        ref = probe.torch_logits[:, t].numpy()
        max_diff = max(max_diff, float(np.abs(logits - ref).max()))
        z = logits.astype(np.float64)
        z = z - z.max(-1, keepdims=True)
        nll += float((np.log(np.exp(z).sum(-1)) - z[np.arange(N), y[:, t]]).sum())
    loss = nll / (N * L)
    # greedy agreement, teacher forced on PyTorch's continuation
    seqs = probe.greedy.numpy()
    p = probe.prompts.shape[1]
    M = seqs.shape[0]
    logits, past = engine.step(seqs[:, :p].copy(), np.ones((M, p), dtype=np.int64), engine.empty_past(M))
    agree = []
    for t in range(p, seqs.shape[1]):
        agree.append(logits.argmax(-1) == seqs[:, t])
        if t + 1 < seqs.shape[1]:
            logits, past = engine.step(seqs[:, t:t + 1].copy(), np.ones((M, t + 1), dtype=np.int64), past)
    return {"max_abs_diff": max_diff, "val_loss": loss,
            "val_loss_delta_pct": 100.0 * (loss - probe.torch_loss) / probe.torch_loss,
            "greedy_agreement": float(np.mean(agree))}


def decode_speed(engines: dict[str, GPTModel], prompt: list[int], *, rounds: int = 5, new_tokens: int = 48) -> dict:
    """Greedy decode tokens/s per engine, rounds interleaved so machine noise hits all alike; median."""
    opts = SamplingOptions(max_new_tokens=new_tokens, heal=False)
    rates: dict[str, list[float]] = {k: [] for k in engines}
    for e in engines.values():  # warm-up
        e.run([prompt], opts)
    for _ in range(rounds):
        for k, e in engines.items():
            g = e.run([prompt], opts)[0]
            rates[k].append(g.tokens_per_s)
    return {k: statistics.median(v) for k, v in rates.items()}


# ----- quantization schemes -------------------------------------------------------------------------
def quantize(model: onnx.ModelProto, *, scheme: str, calib: np.ndarray | None = None, cfg: dict | None = None):
    """Apply one onnxruntime.quantization scheme; returns (model, recipe)."""
    if scheme == "int8-dynamic":
        # per-channel scales: on the stdlib phase3 reference, per-tensor int8 cost +1.00% held-out loss,
        # per-channel +0.58% for 0.3 MB more
        q = common.quantize_int8(untie_head(model), op_types=("MatMul", "Gather"), per_channel=True)
        return q, {"scheme": scheme, "tool": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
                   "op_types": ["MatMul", "Gather"], "per_channel": True, "lm_head": "untied MatMul"}
    if scheme == "int8-nbits":
        # block MatMuls as 8-bit MatMulNBits (int8 compute; the widest block up to 128 that divides
        # their width), the LM head as 8-bit MatMulNBits with one scale per vocabulary row, and the
        # token embedding reads the head's tensor (share_tied_embedding); the position embedding goes
        # through quantize_dynamic's int8 Gather
        q = share_tied_embedding(_head_nbits(_blocks_nbits8(untie_head(model))))
        q = common.quantize_int8(q, op_types=("Gather",))
        return q, {"scheme": scheme, "tool": "MatMulNBitsQuantizer (block MatMuls) + 8-bit MatMulNBits with "
                   "per-row scales (quant_utils, LM head) + GatherBlockQuantized on the head's tensor (tied "
                   "embedding) + quantize_dynamic (position Gather)",
                   "bits": 8, "block_size": f"largest power of two <= {MAX_BLOCK} dividing the width",
                   "tied_scales": "one fp32 scale per vocabulary row", "symmetric": True, "accuracy_level": 4,
                   "op_types": ["MatMul", "Gather"], "tied_embedding": "stored once"}
    if scheme == "int8-static":
        return _quantize_static(untie_head(model), calib, cfg)
    raise ExportError(f"unknown quantization scheme {scheme!r}; known: fp32, {', '.join(SCHEMES)}")


class Int4Search:
    """int4 under the quality budget: 4-bit weights (MatMulNBits / GatherBlockQuantized, block 32,
    asymmetric, int8 compute) on every tensor that keeps the graph inside its budget, 8-bit on the rest.

    All-4-bit is tried first. If it breaks the budget, tensors are moved to 4 bits one at a time,
    biggest first (the LM head, the token embedding, then the block MatMuls), each kept only if the
    whole graph still passes its check: the mixed-precision recipe llama.cpp's k-quants and
    onnxruntime-genai use for sensitive tensors, decided here by measurement. On the stdlib phase3
    reference, a 96-wide model, all-4-bit costs +12.8% held-out loss; the 4-bit embedding alone +3.7%,
    the 4-bit head alone +1.1% (block 16, HQQ and GPTQ were no better), so both stay 8-bit.
    """

    def __init__(self, model: onnx.ModelProto):
        self.model = untie_head(model)
        inits = {i.name: i for i in self.model.graph.initializer}
        self.gather = _token_gather(self.model)
        self.size = {n.name: int(np.prod(inits[n.input[0 if n.op_type == "Gather" else 1]].dims))
                     for n in self.model.graph.node
                     if (n.op_type == "MatMul" and n.input[1] in inits) or n.name == self.gather}

    def build(self, four: set[str]) -> onnx.ModelProto:
        m = self.model
        if four:
            m = common.quantize_nbits(m, bits=4, block_size=32, symmetric=False, include_gather=self.gather in four,
                                      exclude_nodes=[n for n in self.size if n not in four])
        head8 = "lm_head_matmul" not in four
        if set(self.size) - four - {self.gather, "lm_head_matmul"}:  # the remaining block MatMuls: 8-bit
            m = _blocks_nbits8(m)
        if head8:
            m = _head_nbits(m)
        if self.gather not in four:  # an 8-bit embedding reads the 8-bit head's tensor when it can
            m = share_tied_embedding(m) if head8 else \
                common.quantize_int8(m, op_types=("Gather",), include_nodes=[self.gather])
        return m

    def recipe(self, four: set[str]) -> dict:
        total = sum(self.size.values())
        return {"scheme": "int4", "tool": "MatMulNBitsQuantizer (4-bit where the budget allows, 8-bit elsewhere); "
                "an 8-bit embedding reads the 8-bit head's tensor (GatherBlockQuantized)", "bits": 4, "block_size": 32,
                "tied_scales": "one fp32 scale per vocabulary row (8-bit head)", "symmetric": False,
                "accuracy_level": 4, "four_bit": sorted(four), "eight_bit": sorted(set(self.size) - four),
                "four_bit_weight_share": round(sum(self.size[n] for n in four) / total, 4)}

    def run(self, measure):
        """measure(model) -> (engine, figures); returns (model, recipe, engine, figures) of the mix with
        the most 4-bit weights that passes (all-8-bit, checked like the others, when none does)."""
        everything = set(self.size)
        q = self.build(everything)
        eng, f = measure(q)
        if within_budget(f):
            return q, self.recipe(everything), eng, f
        four: set[str] = set()
        best = None
        for name in sorted(self.size, key=lambda n: -self.size[n]):
            trial = four | {name}
            q = self.build(trial)
            eng, f = measure(q)
            if within_budget(f):
                four, best = trial, (q, eng, f)
        if best is None:
            q = self.build(set())
            best = (q, *measure(q))
        return best[0], self.recipe(four), best[1], best[2]


MAX_BLOCK = 128  # widest 8-bit MatMulNBits block for the transformer blocks' MatMuls (1.03 bytes per weight)


def _block_for(width: int) -> int | None:
    """The widest power-of-two block <= MAX_BLOCK that divides ``width`` (MatMulNBits pads a partial
    block: bytes for nothing), None when not even 16 does."""
    block = MAX_BLOCK
    while block > 16 and width % block:
        block //= 2
    return None if width % block else block


def _blocks_nbits8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every MatMul left on an initializer but the LM head as symmetric 8-bit MatMulNBits
    (onnxruntime's MatMulNBitsQuantizer), each in the widest block that divides its input width: on
    phase3 (96 wide) the 96-input projections keep block 32, the 384-input MLP projection gets 128;
    decode speed unchanged (measured interleaved), 0.02 bytes per weight fewer."""
    inits = {i.name: i for i in model.graph.initializer}
    by_block: dict[int, list[str]] = {}
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits and n.name != "lm_head_matmul":
            by_block.setdefault(_block_for(int(inits[n.input[1]].dims[0])) or 32, []).append(n.name)
    m = model
    for block, names in sorted(by_block.items()):
        others = [n.name for n in m.graph.node if n.op_type == "MatMul" and n.name not in names]
        m = common.quantize_nbits(m, bits=8, block_size=block, include_gather=False, exclude_nodes=others)
    return m


def _head_nbits(model: onnx.ModelProto) -> onnx.ModelProto:
    """The untied LM head as symmetric 8-bit MatMulNBits with ONE fp32 scale per vocabulary row.

    The tied (V, C) matrix is most of a small-width GPT-2-vocabulary model (phase3: 91% of the
    weights), so its scales decide the file's bytes per parameter. MatMulNBits takes power-of-two
    blocks only and phase3 is 96 wide: onnxruntime's MatMulNBitsQuantizer gives block 32, an fp32
    scale per 32 weights, 1.125 bytes per weight (1.13 per parameter for the file); a wider block
    pads (64: 1.42), fp16 scales need fp16 activations (measured: casts cost 4% of decode).
    Per-row scales cost 1 + 4/C bytes per weight (phase3: 1.042, the file 1.05 per parameter).

    Written by hand, because no onnxruntime quantizer emits it: the weights are quantized by
    onnxruntime.quantization.quant_utils (compute_scale_zp_blocked with one block per row, symmetric
    int8, and quantize_nparray), stored as MatMulNBits' uint8 (V, C / block, block) blob (value + 128:
    the implied symmetric zero point) with the block the widest power of two dividing C, and the
    (V, 1) row scales are broadcast to MatMulNBits' (V, C / block) by an Expand of two initializers,
    which onnxruntime constant-folds when it loads the file, before MatMulNBits prepacks its weights:
    decode speed measured unchanged against the block-32 head (interleaved rounds), inside the Loop too.
    A width no power of two >= 16 divides falls back to MatMulNBitsQuantizer (block 16, padded).
    """
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnxruntime.quantization.quant_utils import compute_scale_zp_blocked, quantize_nparray

    m = _copy(model)
    inits = {i.name: i for i in m.graph.initializer}
    node = next((n for n in m.graph.node if n.name == "lm_head_matmul"), None)
    if node is None or node.input[1] not in inits:
        raise ExportError("could not find the untied LM head (lm_head_matmul) to quantize")
    w = np.ascontiguousarray(onnx.numpy_helper.to_array(inits[node.input[1]]).T)  # (V, C)
    V, C = w.shape
    block = _block_for(C)
    if block is None:
        return common.quantize_nbits(model, bits=8, block_size=16, include_gather=False)
    zero, scale = compute_scale_zp_blocked(w, TP.INT8, axis=1, block_size=C, symmetric=True)  # (V, 1) each
    q = quantize_nparray(TP.INT8, w, scale, zero)
    blob = (q.astype(np.int16) + 128).astype(np.uint8).reshape(V, C // block, block)
    name = "lm_head.weight_q8"
    new_inits = [onnx.numpy_helper.from_array(blob, name)]
    nodes = []
    if C // block == 1:
        new_inits.append(onnx.numpy_helper.from_array(scale.astype(np.float32), name + ".scales"))
    else:
        new_inits += [onnx.numpy_helper.from_array(scale.astype(np.float32), name + ".row_scales"),
                      onnx.numpy_helper.from_array(np.array([V, C // block], dtype=np.int64), name + ".scales_shape")]
        nodes.append(h.make_node("Expand", [name + ".row_scales", name + ".scales_shape"], [name + ".scales"],
                                 name="lm_head_scales_expand"))
    nodes.append(h.make_node("MatMulNBits", [node.input[0], name, name + ".scales"], list(node.output),
                             name="lm_head_matmul_Q8", domain="com.microsoft", K=C, N=V, bits=8, block_size=block,
                             accuracy_level=4))
    idx = list(m.graph.node).index(node)
    m.graph.node.remove(node)
    for k, n in enumerate(nodes):
        m.graph.node.insert(idx + k, n)
    m.graph.initializer.extend(new_inits)
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(h.make_opsetid("com.microsoft", 1))
    return _prune(m)


def share_tied_embedding(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store the tied embedding once: the token lookup reads the LM head's 8-bit MatMulNBits weight.

    MatMulNBits keeps the head's (V, C) weight as (V, C / block, block) uint8, each row one token's
    embedding, with (V, C / block) scales and, symmetric, the implied zero point 128; that is
    byte for byte what GatherBlockQuantized (bits 8, quantize_axis 1) reads as (V, C) data with the
    same scales and the same default zero point. So the token-embedding Gather (fp32, or int8 with its
    DequantizeLinear) becomes one GatherBlockQuantized on a Reshape of the head's initializer (and its
    scales, _head_nbits' per-row scales broadcast by the Expand), and the embedding's own copy leaves
    the file: phase3 int8 drops from 2 to 1.05 bytes per parameter (a block-32 head: 1.13).
    A model whose head is not 8-bit symmetric MatMulNBits is returned unchanged.
    """
    from onnx import helper as h

    m = _copy(model)
    inits = {i.name: i for i in m.graph.initializer}
    gather = next((n for n in m.graph.node if n.name == _token_gather(m)), None)
    V, C = inits[gather.input[0]].dims
    head = next((n for n in m.graph.node if n.op_type == "MatMulNBits" and len(n.input) == 3
                 and {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}.get("N") == V
                 and {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}.get("bits") == 8), None)
    if head is None:
        return m
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in head.attribute}
    if attrs["K"] != C or C % attrs["block_size"]:  # a padded last block has no (V, C) view
        return m
    consumers = [n for n in m.graph.node if gather.output[0] in n.input]
    out, drop = gather.output[0], [gather]
    if len(consumers) == 1 and consumers[0].op_type == "DequantizeLinear":  # quantize_dynamic's int8 Gather
        out, drop = consumers[0].output[0], [gather, consumers[0]]
    shape = "tied_embedding.shape"
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.array([V, C], dtype=np.int64), shape))
    idx = list(m.graph.node).index(gather)
    new = [h.make_node("Reshape", [head.input[1], shape], ["tied_embedding.data"], name="tied_embedding_reshape"),
           h.make_node("GatherBlockQuantized", ["tied_embedding.data", gather.input[1], head.input[2]], [out],
                       name="tied_embedding_gather", domain="com.microsoft", gather_axis=0, quantize_axis=1,
                       block_size=attrs["block_size"], bits=8)]
    for n in drop:
        m.graph.node.remove(n)
    for k, n in enumerate(new):
        m.graph.node.insert(idx + k, n)
    return _prune(m)


def _token_gather(model: onnx.ModelProto) -> str:
    """Name of the Gather that reads the token embedding (the (V, C) initializer with the most rows)."""
    inits = {i.name: i for i in model.graph.initializer}
    best, rows = None, -1
    for n in model.graph.node:
        if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2 \
                and inits[n.input[0]].dims[0] > rows:
            best, rows = n.name, inits[n.input[0]].dims[0]
    if best is None:
        raise ExportError("could not find the token-embedding Gather")
    return best


def _quantize_static(model: onnx.ModelProto, calib: np.ndarray, cfg: dict):
    """Static QDQ int8 on the transformer's MatMuls, calibrated on training windows; the LM head and
    the token embedding through quantize_dynamic.

    Measured on the stdlib phase3 reference (held-out loss vs PyTorch): QDQ on every MatMul and
    Gather, per-tensor, +5.10%; the head alone accounts for most of it (its input, the final
    LayerNorm's output, has outliers a calibrated per-tensor scale clips or coarsens: +1.8% with the
    head left out), a QDQ embedding +1.3%. Per-channel weights with asymmetric uint8 activations on the
    block MatMuls, head and embedding quantized dynamically: +0.38%.
    """
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    hs = cfg["n_embd"] // cfg["n_head"]
    past_names, _ = io_names(cfg["n_layer"])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            w = next(self.items, None)
            if w is None:
                return None
            feed = {"input_ids": w[None].astype(np.int64), "attention_mask": np.ones((1, len(w)), dtype=np.int64)}
            feed.update({n: np.zeros((1, cfg["n_head"], 0, hs), dtype=np.float32) for n in past_names})
            return feed

    head, gather = "lm_head_matmul", _token_gather(model)
    with tempfile.TemporaryDirectory() as d, common._quiet():
        src, dst = os.path.join(d, "in.onnx"), os.path.join(d, "out.onnx")
        onnx.save(model, src)
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], per_channel=True,
                        nodes_to_exclude=[head],
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                       "DefaultTensorType": onnx.TensorProto.FLOAT})
        q = onnx.load(dst)
    q = common.quantize_int8(q, op_types=("MatMul", "Gather"), per_channel=True, include_nodes=[head, gather])
    return q, {"scheme": "int8-static", "tool": "onnxruntime.quantization.quantize_static (QDQ) + quantize_dynamic",
               "static": {"op_types": ["MatMul"], "nodes": "transformer blocks", "weights": "int8 per-channel",
                          "activations": "uint8 asymmetric, MinMax", "calibration": f"{len(calib)} training windows"},
               "dynamic": {"nodes": ["lm_head", "token embedding"], "per_channel": True}}


def loop_check(step: onnx.ModelProto, step_engine: GPTModel, probe: Probe, meta: dict, threads: int,
               eot: int | None, record) -> onnx.ModelProto:
    """Wrap the chosen graph in the generation Loop and prove it changes nothing: the same logits for
    a single step, the same greedy tokens (Loop-driven vs Python-driven) on every probe prompt, the
    in-graph sampler at top_k 1 equal to greedy, and sampled and penalized generations (seeded)
    equal to numpy's reference sampler (runtime.gpt.sample_next / penalize) driving single passes."""
    t0 = time.time()
    looped = wrap_loop(step, eot=eot)
    engine = _engine(looped, meta, threads)
    x = probe.windows[:4, :-1].numpy()
    a = step_engine.step(x, np.ones_like(x), step_engine.empty_past(len(x)))[0]
    b = engine.step(x, np.ones_like(x), engine.empty_past(len(x)))[0]
    diff = common.max_abs_diff(a, b)
    n = probe.greedy.shape[1] - probe.prompts.shape[1]
    prompts = probe.prompts.tolist()
    stepped = _engine(looped, meta, threads)
    stepped.loop = False  # the same file, one pass per call: the sampler runs in numpy
    figures = {"max_abs_diff": diff}
    checks = {"identical_greedy": (SamplingOptions(max_new_tokens=n, heal=False), step_engine),
              "top_k1_is_greedy": (SamplingOptions(max_new_tokens=n, heal=False, temperature=0.7, top_k=1, seed=0),
                                   None),
              "identical_sampled": (SamplingOptions(max_new_tokens=n, heal=False, temperature=0.8,
                                                    top_k=min(40, stepped.vocab_size), top_p=0.95, seed=1), stepped),
              "identical_penalized": (SamplingOptions(max_new_tokens=n, heal=False, repeat_penalty=1.3,
                                                      repeat_last_n=16), stepped)}
    greedy = [g.token_ids for g in step_engine.run(prompts, checks["identical_greedy"][0])]
    ok = diff == 0.0
    for name, (opts, reference) in checks.items():
        ref = greedy if reference is None else [g.token_ids for g in reference.run(prompts, opts)]
        same = [g.token_ids == r for g, r in zip(engine.run(prompts, opts), ref)]
        figures[name] = f"{sum(same)}/{len(same)}"
        ok = ok and all(same)
    record("loop", looped, t0, figures, ok, "" if ok else "the generation Loop changed the model's outputs")
    if not ok:
        raise ExportError("verification failed; nothing written: the generation Loop changed the outputs ("
                          + ", ".join(f"{k} {v}" for k, v in figures.items()) + ")")
    return looped


# ----- the pipeline ---------------------------------------------------------------------------------
class _Lenient:
    """A character tokenizer that skips (and counts) characters outside its vocabulary, for
    verification text the user did not choose: the stdlib has characters a nanoGPT model never saw."""

    def __init__(self, tok):
        self.tok, self.skipped = tok, 0
        self.eot_id, self.n_vocab = tok.eot_id, tok.n_vocab

    def encode(self, text: str) -> list[int]:
        stoi = self.tok.stoi
        ids = [stoi[c] for c in text if c in stoi]
        self.skipped += len(text) - len(ids)
        return ids


def _in_vocab(ids: np.ndarray, vocab: int) -> tuple[np.ndarray, int]:
    keep = ids < vocab
    return ids[keep].astype(np.int32), int((~keep).sum())


def verification_data(ckpt: Checkpoint, opts: ExportOptions, tok, block: int):
    """Held-out tokens, calibration tokens and where they came from, in this order: ``--data``;
    nanoGPT's ``data/<dataset>/val.bin`` (token ids, found like meta.pkl); the data recorded in an
    edgekit checkpoint; the Python standard library, with a warning. Characters or ids outside the
    vocabulary are skipped and counted, except in data the user named (an error there)."""
    import hashlib

    from edgekit.train.data import build_corpus
    from edgekit.train.nanogpt import read_bin

    files = ckpt.dataset
    own = ckpt.config.get("data") if ckpt.source == "edgekit" else None
    skipped, warning = 0, None
    if opts.data is not None:
        kind, name = "--data", opts.data
        corpus = build_corpus(tok, data=opts.data, tokens=200_000, min_tokens=block + 2)
        val, train = corpus.val, corpus.train
    elif files is not None and files.val_bin is not None:
        kind, name = "nanoGPT val.bin", str(files.val_bin)
        val, skipped = _in_vocab(read_bin(files.val_bin)[:200_000], tok.n_vocab)
        train = val
        if files.train_bin is not None:
            train, more = _in_vocab(read_bin(files.train_bin)[:200_000], tok.n_vocab)
            skipped += more
    else:
        data = own if own is not None and os.path.exists(own) else None
        kind = "checkpoint's training data" if data is not None else "Python standard library"
        lenient = _Lenient(tok) if tok.eot_id is None and hasattr(tok, "stoi") else tok
        corpus = build_corpus(lenient, data=data, tokens=200_000, min_tokens=block + 2)
        val, train, name = corpus.val, corpus.train, corpus.source
        skipped = getattr(lenient, "skipped", 0)
        if data is None:
            why = (f"the checkpoint's training data {own!r} is not here" if own else
                   f"no data/{files.dataset}/val.bin was found" if files is not None and files.dataset else
                   "the checkpoint records no training data")
            warning = f"verifying on the Python standard library: {why}; pass --data to choose"
    if len(val) < block + 2:
        raise ExportError(f"verification data {name} has {len(val)} usable tokens; needs at least {block + 2}")
    info = {"source": kind, "name": name, "tokens": int(len(val)),
            "sha256": hashlib.sha256(np.ascontiguousarray(val, dtype=np.int32).tobytes()).hexdigest(),
            "skipped_out_of_vocabulary": skipped}
    if warning:
        info["warning"] = warning
    return val, train, info


def export(ckpt: Checkpoint, opts: ExportOptions) -> ExportReport:
    t_start = time.time()
    torch.set_num_threads(opts.torch_threads())
    say = log if opts.progress else (lambda _m: None)
    model, cfg = prepare_model(ckpt)
    tok_spec = ckpt.tokenizer or {"kind": "gpt2"}
    tok = from_spec(tok_spec)
    if ckpt.meta_path is not None:
        say(f"[edgekit] vocabulary: {len(tok_spec['itos'])} characters from {ckpt.meta_path}")
    val, train, data_info = verification_data(ckpt, opts, tok, cfg["block_size"])
    say(f"[edgekit] verification data: {data_info['source']} {data_info['name']} ({data_info['tokens']:,} tokens"
        + (f", {data_info['skipped_out_of_vocabulary']:,} out-of-vocabulary skipped" if data_info["skipped_out_of_vocabulary"] else "")
        + ")")
    if "warning" in data_info:
        say(f"[edgekit] warning: {data_info['warning']}")
    probe, report_probe = make_probes(model, val)  # choose on the first half of val, report on the second
    meta = {"family": "gpt", "config": cfg, "vocab_size": tok.n_vocab, "tokenizer": tok_spec,
            "special_tokens": {"eot": tok.eot_id}, "block_size": cfg["block_size"],
            "generation": {"max_new_tokens": 64, "temperature": 0.0},
            "window": {"keep": cfg["block_size"] - cfg["block_size"] // 4},
            "source_checkpoint": os.path.basename(str(ckpt.path)), "source_sha256": ckpt.sha256,
            "source_format": ckpt.source, "source_iter": ckpt.iter_num, "source_best_val_loss": ckpt.best_val_loss}
    threads = opts.threads
    report = ExportReport(output=str(opts.out), family="gpt", scheme="",
                          extra={"verification_data": data_info, "threads": {"torch": torch.get_num_threads(), "onnxruntime": threads}})

    def record(step: str, m: onnx.ModelProto, t0: float, figures: dict, ok: bool, note: str = ""):
        report.steps.append(StepRecord(step=step, bytes=common.model_bytes(m), parity=figures,
                                       seconds=time.time() - t0, ok=ok, note=note))
        say(f"[edgekit] {step}: {common._human_bytes(common.model_bytes(m))}, "
            + ", ".join(f"{k} {common._fmt(v)}" for k, v in figures.items()) + ("" if ok else f"  FAILED {note}"))
        if not ok:
            report.failures.append(f"{step}: {note}")

    def exact_check(step: str, m: onnx.ModelProto, t0: float) -> GPTModel:
        """Check an fp32 step; returns its engine so later steps reuse the session instead of rebuilding it."""
        engine = _engine(m, meta, threads)
        f = check(engine, probe)
        figs = {"max_abs_diff": f["max_abs_diff"]}
        ok = f["max_abs_diff"] <= FP32_TOL
        record(step, m, t0, figs, ok, "" if ok else f"max |logit diff| {f['max_abs_diff']:.2e} > {FP32_TOL:g}")
        return engine

    t0 = time.time()
    graph = to_graph(model)
    exact_check("export", graph, t0)
    if report.failures:
        raise ExportError("verification failed: " + "; ".join(report.failures))
    t0 = time.time()
    simplified = common.simplify(graph)
    base_engine = exact_check("simplify", simplified, t0)
    if report.failures:
        raise ExportError("verification failed: " + "; ".join(report.failures))
    base = simplified
    t0 = time.time()
    try:
        fused = optimize(simplified, cfg)
        common.check_dynamic(simplified, fused, step="optimize")
        fused_engine = _engine(fused, meta, threads)
        f = check(fused_engine, probe)
        prompt = [int(t) for t in val[:8]]
        speed = decode_speed({"before": base_engine, "after": fused_engine}, prompt, rounds=3)
        ok = f["max_abs_diff"] <= FP32_TOL
        keep = ok and speed["after"] >= speed["before"] * FUSION_NOISE  # fewer nodes; keep unless clearly slower
        note = "" if ok else f"max |logit diff| {f['max_abs_diff']:.2e} > {FP32_TOL:g}; fusions skipped"
        record("optimize", fused, t0, {"max_abs_diff": f["max_abs_diff"], "nodes_before": len(simplified.graph.node),
                                       "nodes_after": len(fused.graph.node), "tok_s_before": round(speed["before"]),
                                       "tok_s_after": round(speed["after"]), "kept": keep}, True, note)
        if keep:
            base, base_engine = fused, fused_engine
    except Exception as e:  # the fusions are optional: report why they were skipped, keep the simplified graph
        record("optimize", simplified, t0, {"kept": False}, True, f"skipped: {common.first_line(e)}")
    report.failures.clear()  # a skipped optimization is reported but does not fail the export

    # plain "int8" is the 8-bit scheme that stores the tied matrix once (~1.05 B/param on phase3) and decodes
    # fastest; int8-dynamic keeps a second int8 copy for its Gather (~2 B/param) and is asked for by name
    wanted = {"int8": "int8-nbits"}.get(opts.quant, opts.quant)
    candidates = list(SCHEMES) if wanted == "auto" else ([] if wanted == "fp32" else [wanted])
    built: dict[str, tuple[onnx.ModelProto, dict, dict]] = {}
    engines = {"fp32": base_engine}
    calib = np.stack([train[s:s + cfg["block_size"]] for s in
                      np.linspace(0, len(train) - cfg["block_size"] - 1, 16).astype(int)])
    for scheme in candidates:
        t0 = time.time()
        try:
            if scheme == "int4":
                def measure(m):
                    e = _engine(m, meta, threads)
                    return e, check(e, probe)

                q, recipe, eng, f = Int4Search(base).run(measure)
            else:
                q, recipe = quantize(base, scheme=scheme, calib=calib, cfg=cfg)
                eng = _engine(q, meta, threads)
                f = check(eng, probe)
        except ExportError as e:  # the scheme could not be built: its row says why
            record(f"quantize:{scheme}", base, t0, {}, False, f"could not be built: {e}")
            continue
        # int4's search tuned on the select half; the budget must hold on both halves, and the figures
        # reported (and stored) are the report half's, which no choice was tuned on
        r = check(eng, report_probe)
        ok = within_budget(f) and within_budget(r)
        bad = f if not within_budget(f) else r
        note = "" if ok else (f"val loss {bad['val_loss_delta_pct']:+.2f}% (budget {VAL_LOSS_DELTA_PCT}%), greedy "
                              f"agreement {bad['greedy_agreement']:.3f} (budget {GREEDY_AGREEMENT}) on the "
                              f"{'select' if bad is f else 'report'} half")
        figs = {"val_loss_delta_pct": r["val_loss_delta_pct"], "greedy_agreement": r["greedy_agreement"],
                "max_abs_diff": r["max_abs_diff"], "select_val_loss_delta_pct": f["val_loss_delta_pct"],
                "select_greedy_agreement": f["greedy_agreement"]}
        if scheme == "int4":
            figs["four_bit_weight_share"] = recipe["four_bit_weight_share"]
        record(f"quantize:{scheme}", q, t0, figs, ok, note)
        if ok:
            built[scheme] = (q, recipe, figs)
            engines[scheme] = eng
    if built or wanted == "auto":
        speeds = decode_speed(engines, [int(t) for t in val[:8]])
        report.extra["decode_tokens_per_s"] = speeds
        say("[edgekit] decode tokens/s (1 prompt, 48 tokens, median of 5): "
            + ", ".join(f"{k} {v:,.0f}" for k, v in speeds.items()))
    else:
        speeds = {}
    if wanted == "auto":
        fast = [s for s in built if speeds[s] >= speeds["fp32"] * SPEED_TOLERANCE]
        sizes = {"fp32": common.model_bytes(base), **{s: common.model_bytes(built[s][0]) for s in fast}}
        # fp32 always qualifies, so a scheme bigger than it never wins; sizes within SIZE_TIE of the
        # smallest count as equally small and the fastest of those wins (phase3: int8-nbits is 4%
        # bigger than int8-dynamic but decodes ~40% faster and loses less held-out loss)
        smallest = min(sizes.values())
        tied = [s for s in sizes if sizes[s] <= smallest * (1 + SIZE_TIE)]
        choice = max(tied, key=lambda s: speeds[s])
        failed = {r.step.split(":", 1)[1]: r.note for r in report.steps if r.step.startswith("quantize:") and not r.ok}
        reasons = {s: (failed.get(s, "failed its quality budget") if s not in built else "slower than fp32" if s not in fast
                       else "larger than " + choice if s not in tied else "slower than " + choice)
                   for s in candidates if s != choice}
        report.extra["auto"] = {"chosen": choice, "rejected": reasons}
        say(f"[edgekit] auto: chose {choice}" + (f" (rejected: {', '.join(f'{k}: {v}' for k, v in reasons.items())})"
                                                 if reasons else ""))
    else:
        choice = wanted
        if choice != "fp32" and choice not in built:
            raise ExportError("verification failed; nothing written: " + "; ".join(report.failures or
                                                                                    [f"{choice} could not be built"]))
    if choice == "fp32":
        final, recipe, figs = base, {"scheme": "fp32"}, {}
    else:
        final, recipe, figs = built[choice]
    report.scheme = choice
    final = loop_check(final, engines[choice], probe, meta, threads, tok.eot_id, record)
    meta["quantization"] = recipe
    meta["verification"] = {"steps": [dataclasses.asdict(s) for s in report.steps], "final": figs,
                            "torch_val_loss": report_probe.torch_loss, "decode_tokens_per_s": speeds,
                            "data": data_info,
                            "auto": report.extra.get("auto"),
                            "slices": {"select": f"held-out tokens [0, {len(val) // 2}): int4's search and which "
                                                 "schemes pass (auto's choice)",
                                       "report": f"held-out tokens [{len(val) // 2}, {len(val)}): every figure "
                                                 "reported (val_loss_delta_pct, greedy_agreement); the budget "
                                                 "must hold here too"},
                            "budgets": {"fp32_max_abs_diff": FP32_TOL, "val_loss_delta_pct": VAL_LOSS_DELTA_PCT,
                                        "greedy_agreement": GREEDY_AGREEMENT}}
    common.write_model(final, path=opts.out, meta=meta)
    report.seconds = time.time() - t_start
    return report
