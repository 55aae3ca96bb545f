"""GPT export, the single-call generation Loop: the decode step and the in-graph sampler inside an ONNX
``Loop``, so a generation is one onnxruntime call.

    looped = wrap_loop(step, eot=50256)     # step: the (quantized) KV-cache step graph
"""
from __future__ import annotations

import onnx

from edgekit.errors import ExportError


def _sampler_nodes(p: str, logits: str, token: str) -> list[onnx.NodeProto]:
    """The in-graph sampler: repetition penalty, top-k, temperature, top-p and an inverse-CDF draw, per row.

    Reads (from the enclosing graph) ``temperature``, ``top_p`` and ``repeat_penalty`` (float (B, 1)),
    ``top_k`` (int64 (1,): the batch's largest k), ``row_top_k`` (int64 (B, 1): each row's own k) and
    ``recent_window`` (int64 (B, 1): how many of the last ``recent_ids`` columns each row penalizes), and
    from the loop state ``recent_ids`` (B, N) and the step's uniform ``u`` (B,). Writes ``token`` (B, 1)
    int64. So rows with different settings share one call (edgekit serve's batches). Greedy is the same
    path with k 1 (TopK keeps the lower index on ties, as ArgMax does). The draw runs over each row's k
    survivors sorted by descending probability: ``count(cumsum(p) < u * sum(p))`` (runtime.gpt.sample_next
    mirrors it). Repetition penalty as llama.cpp's: a logit of a token among the row's last n ids is
    divided by the penalty when positive, multiplied when not, once per distinct token (columns outside a
    row's window read its newest id instead, so duplicates scatter the same value).
    """
    from onnx import TensorProto as TP
    from onnx import helper as h

    def const(name, dtype, dims, vals):
        return h.make_node("Constant", [], [name], value=h.make_tensor(name, dtype, dims, vals))

    outer = {"temperature", "top_k", "top_p", "repeat_penalty", "row_top_k", "recent_window"}  # enclosing graph

    def n(op, ins, outs, **kw):
        return h.make_node(op, [x if x in outer else p + x for x in ins], [p + o for o in outs], **kw)

    window = [  # recent_ids columns outside each row's window -> the row's newest id (B, N)
        const(p + "i0", TP.INT64, [], [0]), const(p + "i1", TP.INT64, [], [1]),
        const(p + "ax1v", TP.INT64, [1], [1]), const(p + "neg1", TP.INT64, [1], [-1]),
        const(p + "int_max_v", TP.INT64, [1], [2**62]),
        n("Shape", ["recent_ids"], ["n_recent_v"], start=1, end=2),
        n("Squeeze", ["n_recent_v"], ["n_recent"]),
        n("Range", ["i0", "n_recent", "i1"], ["rcols"]),  # (N,)
        n("Sub", ["n_recent_v", "recent_window"], ["rstart"]),  # (B, 1)
        n("GreaterOrEqual", ["rcols", "rstart"], ["ractive"]),  # (B, N)
        n("Slice", ["recent_ids", "neg1", "int_max_v", "ax1v"], ["newest"]),  # (B, 1)
        n("Where", ["ractive", "recent_ids", "newest"], ["recent_eff"]),
    ]
    penalty = [
        h.make_node("GatherElements", [logits, p + "recent_eff"], [p + "seen"], axis=1),  # (B, N)
        const(p + "f0", TP.FLOAT, [], [0.0]),
        n("Greater", ["seen", "f0"], ["seen_pos"]),
        n("Div", ["seen", "repeat_penalty"], ["seen_div"]),
        n("Mul", ["seen", "repeat_penalty"], ["seen_mul"]),
        n("Where", ["seen_pos", "seen_div", "seen_mul"], ["seen_new"]),
        h.make_node("ScatterElements", [logits, p + "recent_eff", p + "seen_new"], [p + "penalized"], axis=1),
    ]
    top_k = [  # the batch's largest k, then each row's own: the rest -inf
        n("TopK", ["penalized", "top_k"], ["kv", "ki"], axis=-1, largest=1, sorted=1),  # (B, K) each
        n("Shape", ["kv"], ["k_all_v"], start=1, end=2),
        n("Squeeze", ["k_all_v"], ["k_all"]),
        n("Range", ["i0", "k_all", "i1"], ["kcols"]),  # (K,)
        n("GreaterOrEqual", ["kcols", "row_top_k"], ["beyond"]),  # (B, K)
        const(p + "ninf", TP.FLOAT, [], [float("-inf")]),
        n("Where", ["beyond", "ninf", "kv"], ["kv_row"]),
    ]
    draw = [
        n("Div", ["kv_row", "temperature"], ["kz"]),
        n("Softmax", ["kz"], ["kp"], axis=-1),
        n("CumSum", ["kp", "i1"], ["kc"]),
        n("Sub", ["kc", "kp"], ["before"]),
        n("Less", ["before", "top_p"], ["keep"]),  # nucleus: always keeps the most likely token
        n("Where", ["keep", "kp", "f0"], ["kq"]),
        n("CumSum", ["kq", "i1"], ["kc2"]),
        n("ReduceMax", ["kc2", "ax1v"], ["total"], keepdims=1),  # (B, 1)
        n("Unsqueeze", ["u", "ax1v"], ["u2"]),  # (B, 1)
        n("Mul", ["u2", "total"], ["thr"]),
        n("Less", ["kc2", "thr"], ["below"]),
        n("Cast", ["below"], ["below_i"], to=TP.INT64),
        n("ReduceSum", ["below_i", "ax1v"], ["pick"], keepdims=1),  # (B, 1)
        n("Sub", ["row_top_k", "i1"], ["kmax"]),  # (B, 1)
        n("Min", ["pick", "kmax"], ["pick_c"]),
        h.make_node("GatherElements", [p + "ki", p + "pick_c"], [token], axis=1),  # (B, 1)
    ]
    return window + penalty + top_k + draw


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
    seed, so sampling stays repeatable), per row ``temperature``, ``top_p`` and ``repeat_penalty`` (float
    (B, 1)), ``row_top_k`` and ``recent_window`` (int64 (B, 1)), ``top_k`` (int64 (1,), the largest row's)
    and ``recent_ids`` (B, N), the last N context tokens the repetition penalty looks at (each row its
    last ``recent_window``), and one output, ``tokens`` (k, B). (Before issue 22 the settings were scalars,
    one for the whole batch; the runtime reads either.) Pass 1 consumes ``input_ids``,
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
                              h.make_tensor_value_info("temperature", TP.FLOAT, ["batch", 1]),
                              h.make_tensor_value_info("top_k", TP.INT64, [1]),
                              h.make_tensor_value_info("top_p", TP.FLOAT, ["batch", 1]),
                              h.make_tensor_value_info("repeat_penalty", TP.FLOAT, ["batch", 1]),
                              h.make_tensor_value_info("recent_ids", TP.INT64, ["batch", "recent"]),
                              h.make_tensor_value_info("row_top_k", TP.INT64, ["batch", 1]),
                              h.make_tensor_value_info("recent_window", TP.INT64, ["batch", 1])]
    outputs = [h.make_tensor_value_info("logits", TP.FLOAT, ["steps_run", "batch", "logits_width"])]
    outputs += list(g.output)[1:] + [h.make_tensor_value_info("tokens", TP.INT64, ["steps_run", "batch"])]
    graph = h.make_graph(outer_nodes, g.name or "edgekit_gpt", inputs, outputs, list(g.initializer))
    m = h.make_model(graph, opset_imports=list(step.opset_import), ir_version=step.ir_version,
                     producer_name=step.producer_name)
    m.doc_string = step.doc_string
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer):
        onnx.checker.check_model(m)  # (weights on disk: onnxruntime's session checks the file instead)
    return m

