"""GPT export, the quantization schemes: int8-dynamic, int8-nbits, int8-static and int4's measured search.

    q, recipe = quantize(graph, scheme="int8-nbits")
    q, recipe, engine, figures = Int4Search(graph).run(measure)

Every scheme starts from the untied LM head (gpt_graph.untie_head); recipes go into the file's metadata.
"""
from __future__ import annotations

import os

import numpy as np
import onnx

from edgekit.errors import ExportError
from edgekit.export import common
from edgekit.export.gpt_graph import _copy, _prune, io_names, untie_head
from edgekit.export.gpt_verify import within_budget

SCHEMES = ("int4", "int8-dynamic", "int8-nbits", "int8-static")  # auto's candidates

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

