"""GPT export, the quantization schemes: block-quantized weights written one tensor at a time, the tied
embedding and LM head stored once in every scheme, and int4's measured ladder of block sizes.

    q, recipe = build(base, store, INT8_NBITS)          # int8-nbits: MatMulNBits + GatherBlockQuantized
    for mix in INT4_LADDER: q, recipe = build(base, store, mix)   # smallest first, the first that passes wins
    q, recipe = quantize_whole(base, store, scheme="int8-dynamic")  # onnxruntime's whole-model quantizers

``base`` is the fp32 step graph whose weights live in a WeightStore (export/weights.py); ``build`` reads
one weight at a time, quantizes it with onnxruntime's own block quantizer (the C++ kernels
MatMulNBitsQuantizer calls) and returns a self-contained graph. Recipes go into the file's metadata.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import onnx
from onnx import helper as h

from edgekit.errors import ExportError
from edgekit.export import common
from edgekit.export.gpt_graph import _copy, _prune, io_names, lm_head, token_gather, untie_head
from edgekit.export.weights import INLINE_MAX

SCHEMES = ("int4", "int8-nbits", "int8-dynamic", "int8-static")  # auto's candidates, smallest first
WHOLE_MODEL = ("int8-dynamic", "int8-static")  # onnxruntime's quantizers of a whole in-memory model
ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations and integer dot products (VNNI) on the CPU


@dataclasses.dataclass(frozen=True)
class Bits:
    """One group's weight format: MatMulNBits' bits, block (the widest power of two up to this that
    divides the input width) and symmetry; ``per_row``: one scale per output row (8-bit tied matrix)."""

    bits: int
    block: int = 32
    symmetric: bool = False
    per_row: bool = False

    def describe(self) -> str:
        if self.per_row:
            return f"{self.bits}-bit, one fp32 scale per vocabulary row, symmetric"
        return f"{self.bits}-bit, block {self.block}, {'symmetric' if self.symmetric else 'asymmetric (zero points)'}"


@dataclasses.dataclass(frozen=True)
class Mix:
    """A recipe: the tied embedding/head matrix (stored once) and every transformer-block MatMul."""

    tied: Bits
    blocks: Bits

    def bits_per_weight(self, c: int) -> tuple[float, float]:
        """Approximate bits per weight of the tied matrix and of the blocks (c = model width)."""
        def one(b: Bits) -> float:
            block = c if b.per_row else b.block
            return b.bits + 32 / block + (0 if b.symmetric else b.bits / block)
        return one(self.tied), one(self.blocks)


INT8_NBITS = Mix(tied=Bits(8, symmetric=True, per_row=True), blocks=Bits(8, 128, symmetric=True))
# int4, smallest first; the first rung that keeps both halves of the held-out data inside the quality
# budget wins. Measured on the trained GPT-2 124M (stdlib, val 1.38), report half: all block 128 +0.89%
# loss / 0.973 agreement but the select half +1.08% / 0.945 (fails); tied 64 + blocks 128 +0.86% / 0.980
# (passes, 71 MB with the tied matrix once); block 32 everywhere +0.03% / 0.977. Block 128 is also the
# fastest kernel here: the 768x50257 head took 0.62 ms per token at block 128, 0.89 at 64, 1.07 at 32
# (4-bit, int8 compute, one thread); 8-bit blocks are ~2x the bytes.
INT4_LADDER = (
    Mix(Bits(4, 128), Bits(4, 128)),
    Mix(Bits(4, 64), Bits(4, 128)),
    Mix(Bits(4, 32), Bits(4, 128)),
    Mix(Bits(4, 32), Bits(4, 64)),
    Mix(Bits(4, 32), Bits(4, 32)),
    Mix(Bits(8, symmetric=True, per_row=True), Bits(4, 128)),
    Mix(Bits(8, symmetric=True, per_row=True), Bits(4, 32)),
)


def block_for(width: int, most: int) -> int:
    """The widest power-of-two block <= ``most`` (and >= 16) that divides ``width``; ``most`` when none
    does (MatMulNBits then pads the last block)."""
    block = most
    while block > 16 and width % block:
        block //= 2
    return block if width % block == 0 else most


def _quantize_kn(w: np.ndarray, b: Bits, block: int):
    """onnxruntime's block quantizer on a (K, N) fp32 weight: packed (N, K/block, block*bits/8) uint8,
    scales (N, K/block), zero points (packed, or None when symmetric)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer

    cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=b.symmetric, bits=b.bits,
                                       accuracy_level=ACCURACY_LEVEL)
    packed, scales, zp = DefaultWeightOnlyQuantizer(cfg).qbits_block_quant(np.ascontiguousarray(w, dtype=np.float32))
    return packed, scales, (None if b.symmetric else zp)


def _row_quantize_8bit(w_vc: np.ndarray):
    """8-bit symmetric with one scale per row of the (V, C) tied matrix: onnxruntime's quant_utils
    (compute_scale_zp_blocked with one block per row, quantize_nparray), stored as MatMulNBits' uint8
    blob (value + 128: the implied symmetric zero point). Per-row scales cost 1 + 4/C bytes per weight;
    MatMulNBitsQuantizer only makes power-of-two blocks (phase3 is 96 wide: block 32, 1.125)."""
    from onnx import TensorProto as TP
    from onnxruntime.quantization.quant_utils import compute_scale_zp_blocked, quantize_nparray

    w = np.ascontiguousarray(w_vc, dtype=np.float32)
    zero, scale = compute_scale_zp_blocked(w, TP.INT8, axis=1, block_size=w.shape[1], symmetric=True)  # (V, 1)
    q = quantize_nparray(TP.INT8, w, scale, zero)
    return (q.astype(np.int16) + 128).astype(np.uint8), scale.astype(np.float32)


def _matmul_nbits(name: str, a: str, out: str, k: int, n: int, bits: int, block: int, inputs: list[str]):
    return h.make_node("MatMulNBits", [a, *inputs], [out], name=name, domain="com.microsoft", K=k, N=n, bits=bits,
                       block_size=block, accuracy_level=ACCURACY_LEVEL)


def _tied(m: onnx.ModelProto, w_vc: np.ndarray, b: Bits) -> tuple[list, list]:
    """The LM head as MatMulNBits and the token lookup as GatherBlockQuantized, reading the SAME
    initializers: MatMulNBits keeps the head's (V, C) weight as (V, C/block, block*bits/8) bytes, each
    row one token's embedding with its scales and zero points, which is byte for byte what
    GatherBlockQuantized (quantize_axis 1, gather_axis 0, bits 4 or 8) reads as (V, C*bits/8). Checked
    exactly against MatMulNBits' own dequantization in tests (the lookup equals the head's weights)."""
    head, gather = lm_head(m), token_gather(m)
    V, C = w_vc.shape
    nodes, inits, p = [], [], "tied_embedding"
    if b.per_row:
        blob, row_scales = _row_quantize_8bit(w_vc)
        block = block_for(C, 128)
        if C % block:
            raise ExportError(f"the 8-bit tied matrix needs a width divisible by 16; this model is {C} wide")
        inits += [onnx.numpy_helper.from_array(blob.reshape(V, C // block, block), p + ".q")]
        if C // block == 1:
            inits.append(onnx.numpy_helper.from_array(row_scales, p + ".scales"))
        else:  # MatMulNBits wants (V, C/block) scales: an Expand onnxruntime folds at load (no bytes on disk)
            inits += [onnx.numpy_helper.from_array(row_scales, p + ".row_scales"),
                      onnx.numpy_helper.from_array(np.array([V, C // block], dtype=np.int64), p + ".scales_shape")]
            nodes.append(h.make_node("Expand", [p + ".row_scales", p + ".scales_shape"], [p + ".scales"],
                                     name="tied_embedding_scales_expand"))
        bits, q_in = 8, [p + ".q", p + ".scales"]
    else:
        block = block_for(C, b.block)
        if C % block:
            raise ExportError(f"block {b.block} cannot tile the {C}-wide tied matrix; the lookup needs whole blocks")
        packed, scales, zp = _quantize_kn(np.asarray(w_vc).T, b, block)
        inits += [onnx.numpy_helper.from_array(packed, p + ".q"), onnx.numpy_helper.from_array(scales, p + ".scales")]
        bits, q_in = b.bits, [p + ".q", p + ".scales"]
        if zp is not None:
            inits.append(onnx.numpy_helper.from_array(zp, p + ".zero_points"))
            q_in.append(p + ".zero_points")
    inits += [onnx.numpy_helper.from_array(np.array([V, C * bits // 8], dtype=np.int64), p + ".data_shape"),
              onnx.numpy_helper.from_array(np.array([V, -1], dtype=np.int64), p + ".rows")]
    nodes.append(h.make_node("Reshape", [p + ".q", p + ".data_shape"], [p + ".data"], name="tied_embedding_data"))
    g_in = [p + ".data", gather.input[1]]
    for i, x in enumerate(q_in[1:]):  # scales (and zero points) as (V, blocks)
        nodes.append(h.make_node("Reshape", [x, p + ".rows"], [x + ".by_row"], name=f"tied_embedding_rows_{i}"))
        g_in.append(x + ".by_row")
    nodes.append(h.make_node("GatherBlockQuantized", g_in, list(gather.output), name="tied_embedding_gather",
                             domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=block, bits=bits))
    nodes.append(_matmul_nbits(f"lm_head_matmul_Q{bits}", head.input[0], head.output[0], C, V, bits, block, q_in))
    return nodes, inits


def _position_lookup(node: onnx.NodeProto, w_pc: np.ndarray) -> tuple[list, list]:
    """The position embedding's Gather as an 8-bit GatherBlockQuantized (symmetric blocks, the quantizer's
    own 8-bit kernel; uint8 with the implied zero point 128): a quarter of its fp32 bytes (on the 124M,
    3.1 MB -> 0.8 MB), and positions are only looked up, never multiplied."""
    P, C = w_pc.shape
    block = block_for(C, 128)
    if C % block:
        return [node], []
    packed, scales, _ = _quantize_kn(np.asarray(w_pc).T, Bits(8, block, symmetric=True), block)
    p = node.input[0]
    inits = [onnx.numpy_helper.from_array(packed.reshape(P, C), p + "_Q8"),
             onnx.numpy_helper.from_array(scales, p + "_scales")]
    return [h.make_node("GatherBlockQuantized", [p + "_Q8", node.input[1], p + "_scales"], list(node.output),
                        name=(node.name or "position") + "_Q8", domain="com.microsoft", gather_axis=0,
                        quantize_axis=1, block_size=block, bits=8)], inits


def build(base: onnx.ModelProto, store, mix: Mix, *, progress=None) -> tuple[onnx.ModelProto, dict]:
    """``base`` (fp32, weights in ``store``) with every MatMul weight and the tied matrix block-quantized,
    one tensor at a time, as ``mix`` says. Its large tensors live in ``store`` (sessions map them; the
    file is written self-contained when under 2 GB, common.write_model), so a candidate costs no memory
    beyond the sessions that check it."""
    m = _copy(base)
    inits = {t.name: t for t in m.graph.initializer}
    graph_nodes = list(m.graph.node)  # held: the replacements below are keyed by these objects' ids
    head, gather = lm_head(m), token_gather(m)
    tied_nodes, new_inits = _tied(m, store.read(inits[gather.input[0]]), mix.tied)
    targets = [n for n in graph_nodes if n.op_type == "MatMul" and n.input[1] in inits and n.name != head.name]
    by_name = {n.name: n for n in graph_nodes}
    replaced: dict[int, list] = {id(by_name[gather.name]): tied_nodes[:-1], id(by_name[head.name]): tied_nodes[-1:]}
    for n in graph_nodes:  # the position embedding: the other Gather on a 2-D weight
        t = inits.get(n.input[0]) if n.op_type == "Gather" and n.name != gather.name else None
        if t is not None and len(t.dims) == 2:
            replaced[id(n)], more = _position_lookup(n, store.read(t))
            new_inits += more
    for i, n in enumerate(targets):
        w = store.read(inits[n.input[1]])  # (K, N)
        K, N = w.shape
        block = block_for(K, mix.blocks.block)
        packed, scales, zp = _quantize_kn(w, mix.blocks, block)
        q = [store.put(n.input[1] + f"_Q{mix.blocks.bits}", packed), store.put(n.input[1] + "_scales", scales)]
        if zp is not None:
            q.append(store.put(n.input[1] + "_zero_points", zp))
        new_inits += q
        replaced[id(n)] = [_matmul_nbits(f"{n.name}_Q{mix.blocks.bits}", n.input[0], n.output[0], K, N,
                                         mix.blocks.bits, block, [t.name for t in q])]
        if progress is not None:
            progress(i + 1, len(targets))
    nodes = [x for n in graph_nodes for x in replaced.get(id(n), [n])]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(new_inits)
    m = _prune(m)
    for t in m.graph.initializer:  # the new large tensors go to the store too: the candidate stays a small
        if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) > INLINE_MAX:  # proto, its
            t.CopyFrom(store.put(t.name, onnx.numpy_helper.to_array(t)))  # sessions map the work file
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(h.make_opsetid("com.microsoft", 1))
    return m, recipe(mix)


def recipe(mix: Mix) -> dict:
    return {"tool": "onnxruntime's block quantizer (MatMulNBitsQuantizer's kernels), one tensor at a time; the "
                    "tied matrix read by MatMulNBits (LM head) and GatherBlockQuantized (token lookup)",
            "tied_embedding": "stored once", "tied": mix.tied.describe(), "blocks": mix.blocks.describe(),
            "position_embedding": "8-bit, symmetric blocks (GatherBlockQuantized)", "accuracy_level": ACCURACY_LEVEL}


def quantize_whole(base: onnx.ModelProto, store, *, scheme: str, calib: np.ndarray | None = None,
                   cfg: dict | None = None) -> tuple[onnx.ModelProto, dict]:
    """onnxruntime.quantization's whole-model schemes (they need the fp32 model in memory, so only
    models under protobuf's 2 GB take them; pipeline refuses larger ones before any work)."""
    model = untie_head(store.inline(base))
    if scheme == "int8-dynamic":
        # per-channel scales: on the stdlib phase3 reference, per-tensor int8 cost +1.00% held-out loss,
        # per-channel +0.58% for 0.3 MB more
        q = common.quantize_int8(model, op_types=("MatMul", "Gather"), per_channel=True)
        return q, {"scheme": scheme, "tool": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
                   "op_types": ["MatMul", "Gather"], "per_channel": True, "lm_head": "untied MatMul",
                   "tied_embedding": "stored twice (int8 head and int8 lookup)"}
    if scheme == "int8-static":
        return _quantize_static(model, calib, cfg)
    raise ExportError(f"unknown quantization scheme {scheme!r}; known: fp32, {', '.join(SCHEMES)}")


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

    head, gather = "lm_head_matmul", token_gather(model).name
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

