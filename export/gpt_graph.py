"""GPT export, the graph: the KV-cache step (dynamo, fused attention), the LM-head untie, the transformer
fusions, and the single-call generation Loop with its in-graph sampler.

    step = to_graph(model)                  # (input_ids, attention_mask, *past) -> (logits, *present)
    looped = wrap_loop(optimize(common.simplify(step), cfg), eot=50256)
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import torch

from edgekit.errors import ExportError
from edgekit.export import common, rewrites
from edgekit.models.gpt import GPT
from edgekit.runtime.tokenizer import from_spec
from edgekit.train.checkpoint import Checkpoint

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


def _const(name, dtype, dims, vals) -> onnx.NodeProto:
    return onnx.helper.make_node("Constant", [], [name], value=onnx.helper.make_tensor(name, dtype, dims, vals))


def _loop_body(g: onnx.GraphProto, in_names: list[str], past: list[str], present: list[str],
               eot: int | None) -> onnx.GraphProto:
    """wrap_loop's body: the step's nodes (prefixed ``loop.``), the sampler, and the state carried to the next pass."""
    from onnx import TensorProto as TP
    from onnx import helper as h

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
        _const(p + "axis1", TP.INT64, [1], [1]),
        _const(p + "int_max", TP.INT64, [1], [2**62]),
        h.make_node("Slice", [p + "recent_ids", p + "axis1", p + "int_max", p + "axis1"], [p + "recent_tail"]),
        h.make_node("Concat", [p + "recent_tail", p + "next"], [p + "recent_out"], axis=1),
        h.make_node("Squeeze", [p + "next", p + "axis1"], [p + "token"]),  # (B,)
        _const(p + "eot", TP.INT64, [], [-1 if eot is None else int(eot)]),
        h.make_node("Equal", [p + "token", p + "eot"], [p + "is_eot"]),
        h.make_node("Cast", [p + "is_eot"], [p + "is_eot_i"], to=TP.INT64),
        h.make_node("ReduceMin", [p + "is_eot_i"], [p + "all_eot"], keepdims=0),
        h.make_node("Cast", [p + "all_eot"], [p + "all_eot_b"], to=TP.BOOL),
        h.make_node("Not", [p + "all_eot_b"], [p + "cond_out"]),
        # logits leave the loop only for a single step: (B, V) when steps == 1, (B, 0) otherwise
        _const(p + "zero", TP.INT64, [1], [0]),
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
    return body


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
    body = _loop_body(g, in_names, past, present, eot)
    outer_nodes = [
        _const("one", TP.INT64, [], [1]),
        h.make_node("Equal", ["steps", "one"], ["single_step"]),
        h.make_node("Cast", ["single_step"], ["single_step_i"], to=TP.INT64),
        _const("all_columns", TP.INT64, [1], [2**62]),
        h.make_node("Mul", ["single_step_i", "all_columns"], ["logits_width"]),
        _const("true", TP.BOOL, [], [True]),
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

