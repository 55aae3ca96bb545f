"""Exact graph rewrites around onnxruntime's transformer optimizer, so bias-on and bias-off GPTs fuse alike.

    m = zero_layernorm_bias(m)        # before optimize_model: LayerNorm(x, w) -> LayerNorm(x, w, 0)
    m = fold_attention_bias(m)        # after it: MatMul -> Add(b) -> Split -> MHA  ==>  MatMul -> Split -> MHA(bias=b)

nanoGPT's train.py defaults to ``bias=False``: its LayerNorms export with two inputs, and
onnxruntime's SkipLayerNormalization fusion indexes a third (``list index out of range``), so every
bias-off export lost its fusions (88 nodes instead of 53, and the slower graph). A zero beta is exact.
With bias on, the QKV projection's bias is a separate Add per layer that bias-off graphs do not have;
MultiHeadAttention adds a packed (3C,) bias to q, k and v itself, so folding it there is exact too
and both graphs end with the same operators.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def copy_model(m: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy: onnxruntime's optimizer and quantizers edit their input in place."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    return out


def zero_layernorm_bias(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every bias-free LayerNormalization an explicit zero bias (same output, fusable)."""
    m = copy_model(model)
    inits = {i.name: i for i in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type != "LayerNormalization" or len(node.input) >= 3 and node.input[2]:
            continue
        scale = inits.get(node.input[1])
        if scale is None:
            continue
        name = node.input[1] + ".zero_bias"
        if name not in inits:
            zero = np.zeros(tuple(scale.dims), dtype=numpy_helper.to_array(scale).dtype)
            m.graph.initializer.append(numpy_helper.from_array(zero, name))
            inits[name] = m.graph.initializer[-1]
        del node.input[2:]
        node.input.append(name)
    return m


def fold_attention_bias(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move the QKV projection's bias Add into MultiHeadAttention's own ``bias`` input."""
    m = copy_model(model)
    inits = {i.name for i in m.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in m.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    producers = {o: n for n in m.graph.node for o in n.output}
    graph_outputs = {o.name for o in m.graph.output}
    dead = []
    for add in m.graph.node:
        if add.op_type != "Add" or len(add.input) != 2 or add.output[0] in graph_outputs:
            continue
        bias = next((x for x in add.input if x in inits), None)
        other = next((x for x in add.input if x != bias), None)
        if bias is None or other is None or producers.get(other) is None or producers[other].op_type != "MatMul":
            continue
        users = consumers.get(add.output[0], [])
        if len(users) != 1 or users[0].op_type != "Split" or len(users[0].output) != 3:
            continue
        split = users[0]
        mhas = [consumers.get(o, []) for o in split.output]
        if not all(len(u) == 1 and u[0].op_type == "MultiHeadAttention" for u in mhas):
            continue
        mha = mhas[0][0]
        if any(u[0] is not mha for u in mhas) or list(mha.input[:3]) != list(split.output) \
                or (len(mha.input) > 3 and mha.input[3]):
            continue
        split.input[0] = other
        while len(mha.input) < 4:
            mha.input.append("")
        mha.input[3] = bias
        dead.append(add)
    for n in dead:
        m.graph.node.remove(n)
    return m


def fuse_residual_layernorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """The final ``ln_f``, which onnxruntime's optimizer leaves as Add(s) -> Gather(last position) ->
    LayerNorm, becomes Gather, Gather -> SkipLayerNormalization(bias=b), bias on or off.

    The logits are computed for the last position only, so a Gather sits between the last residual
    Add and ``ln_f`` and the SkipLayerNorm fusion does not match. Selecting the position on both
    residual operands first is exact and lets one fused kernel add them (and, with bias on, the last
    MLP projection's bias): bias-on and bias-off graphs end with the same three nodes.
    """
    m = copy_model(model)
    inits = {i.name for i in m.graph.initializer}
    uses: dict[str, int] = {}
    for n in m.graph.node:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    for o in m.graph.output:
        uses[o.name] = uses.get(o.name, 0) + 1
    producers = {o: n for n in m.graph.node for o in n.output}
    for ln in list(m.graph.node):
        if ln.op_type != "LayerNormalization" or len(ln.output) != 1 or len(ln.input) < 3 or not ln.input[2]:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in ln.attribute}
        select = producers.get(ln.input[0])
        if attrs.get("axis", -1) != -1 or select is None or select.op_type != "Gather" \
                or uses.get(select.output[0]) != 1:
            continue
        add = producers.get(select.input[0])
        if add is None or add.op_type != "Add" or uses.get(add.output[0]) != 1 or any(x in inits for x in add.input):
            continue
        x, skip = add.input
        bias_add, bias = None, None
        for i, operand in enumerate(add.input):  # the operand that is MatMul + bias, if any
            p = producers.get(operand)
            b = [t for t in p.input if t in inits] if p is not None and p.op_type == "Add" else []
            if len(b) == 1 and uses.get(operand) == 1:
                bias_add, bias = p, b[0]
                x, skip = next(t for t in p.input if t != bias), add.input[1 - i]
                break
        picks = []
        for tag, src in (("input", x), ("skip", skip)):
            g = onnx.NodeProto()
            g.CopyFrom(select)
            g.input[0], g.output[0], g.name = src, f"{ln.output[0]}.{tag}_last", f"{select.name}_{tag}"
            picks.append(g)
        fused = onnx.helper.make_node(
            "SkipLayerNormalization", [picks[0].output[0], picks[1].output[0], ln.input[1], ln.input[2]]
            + ([bias] if bias else []), list(ln.output), name=ln.name + "_skip", domain="com.microsoft",
            epsilon=float(attrs.get("epsilon", 1e-5)))
        idx = list(m.graph.node).index(ln)
        for k, node in enumerate((*picks, fused)):
            m.graph.node.insert(idx + k, node)
        for node in (ln, select, add, *([bias_add] if bias else [])):
            m.graph.node.remove(node)
    return m
