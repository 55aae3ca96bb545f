"""GPT export, the graph: the KV-cache step (dynamo, fused attention), the LM-head untie, the transformer
fusions, and the single-call generation Loop with its in-graph sampler.

    step = to_graph(model)                  # (input_ids, attention_mask, *past) -> (logits, *present)
    looped = gpt_loop.wrap_loop(optimize(common.simplify(step), cfg), eot=50256)
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import torch

import edgekit
from edgekit.errors import ExportError
from edgekit.export import common, rewrites
from edgekit.models.gpt import GPT, GPTConfig
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
    """The checkpoint's model without a copy of its weights, its LM head trimmed to the tokenizer
    (nanoGPT pads GPT-2's 50,257 to 50,304).

    The model is built on PyTorch's meta device and then takes the checkpoint's own tensors
    (``load_state_dict(assign=True)``): a memory-mapped checkpoint stays on disk until the probes
    read it, and nothing is initialised only to be overwritten (a gpt2-xl init alone is 6 GB).
    The vocabulary trim is a view of the same storage. Non-fp32 weights (a half-precision checkpoint)
    are converted one tensor at a time.
    """
    cfg = GPTConfig(**{k: v for k, v in ckpt.model_args.items() if k in GPTConfig.__dataclass_fields__})
    tok = from_spec(ckpt.tokenizer or {"kind": "gpt2"})
    if tok.n_vocab > cfg.vocab_size:
        raise ExportError(f"tokenizer has {tok.n_vocab} ids but the model only {cfg.vocab_size}; wrong --meta?")
    n = tok.n_vocab
    state = {k: (v if v.dtype == torch.float32 else v.float()) for k, v in ckpt.state_dict.items()}
    for k in ("transformer.wte.weight", "lm_head.weight"):
        if k in state and state[k].shape[0] > n:
            state[k] = state[k][:n]
    if "lm_head.weight" not in state and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    try:
        with torch.device("meta"):
            model = GPT(dataclasses.replace(cfg, vocab_size=n))
        model.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, TypeError, ValueError, AssertionError) as e:
        first = next((ln.strip() for ln in str(e).split(". ") if "size mismatch" in ln or "Missing" in ln
                      or "Unexpected" in ln), str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise ExportError(f"checkpoint {ckpt.path}: weights do not match model_args ({first[:200]})") from None
    model.transformer.wte.weight = model.lm_head.weight  # assign replaced the tied Parameter with two
    return model.eval(), model.config.to_dict()


def _example(cfg: GPTConfig):
    """Example inputs and dynamic shapes for the exporter."""
    hs = cfg.n_embd // cfg.n_head
    past_names, _ = io_names(cfg.n_layer)
    B, T, P = 2, 3, 2
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    mask = torch.ones(B, P + T, dtype=torch.long)
    past = tuple(torch.randn(B, cfg.n_head, P, hs) * 0.1 for _ in past_names)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=1, max=cfg.block_size)
    plen = torch.export.Dim("past_sequence", min=0, max=cfg.block_size)
    dyn = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: torch.export.Dim.AUTO},
           "past": tuple({0: batch, 2: plen} for _ in past_names)}
    return (ids, mask, *past), dyn


def _graph_passes():
    """onnxscript's optimizer passes as torch.onnx.export(optimize=True) runs them, less the initializer
    deduplication, which hashes every weight (the weights are on disk and distinct by construction)."""
    import onnx_ir as ir
    import onnx_ir.passes.common as cp
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding as cf

    fold = ir.passes.PassManager([cf.FoldConstantsPass(shape_inference=True,
                                                      input_size_limit=cf.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                                                      output_size_limit=cf.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT),
                                  rewriter.RewritePass(rewriter._DEFAULT_REWRITE_RULES), cp.RemoveUnusedNodesPass(),
                                  cp.RemoveUnusedFunctionsPass(), cp.RemoveUnusedOpsetsPass()],
                                 steps=2, early_stop=True)
    return ir.passes.Sequential(cp.InlinePass(), fold, cp.RemoveUnusedNodesPass(),
                                cp.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                                cp.LiftSubgraphInitializersToMainGraphPass(), cp.CommonSubexpressionEliminationPass(),
                                cp.OutputFixPass(), cp.NameFixPass())


def _weight(state: dict, name: str) -> np.ndarray:
    """The values of the exported graph's initializer ``name`` from the model's own tensors: the
    exporter names them after _CachedLM's parameters (``model.<state key>``, ``..._t`` transposed)."""
    key = name[len("model."):] if name.startswith("model.") else name
    if key.endswith(".weight_t"):
        return state[key[:-2]].detach().numpy().T
    return state[key].detach().numpy()


def to_graph(model: GPT, store) -> onnx.ModelProto:
    """torch.onnx.export (dynamo) of the KV-cache step with dynamic batch, sequence and past, its weights
    written into ``store`` (export/weights.py) one tensor at a time.

    The graph is traced from a twin of the model on PyTorch's meta device, so the exporter never holds
    the weights; each initializer then points at its tensor in the store. The result is a small
    ModelProto whatever the model's size.
    """
    import onnx_ir as ir

    cfg = model.config
    with torch.device("meta"):
        twin = GPT(cfg).eval()
    args, dyn = _example(cfg)
    past_names, present_names = io_names(cfg.n_layer)
    with common._quiet(), torch.no_grad():
        try:
            prog = torch.onnx.export(_CachedLM(twin).eval(), args, input_names=["input_ids", "attention_mask", *past_names],
                                     output_names=["logits", *present_names], dynamic_shapes=dyn, dynamo=True,
                                     external_data=False, opset_version=common.OPSET, optimize=False,
                                     custom_translation_table=_attention_to_onnx())
        except Exception as e:
            raise ExportError(f"torch.onnx.export failed: {str(e).splitlines()[0][:200]}") from e
    state = model.state_dict(keep_vars=True)
    graph = prog.model
    for name, value in graph.graph.initializers.items():
        t = store.put(name, _weight(state, name).astype(np.float32, copy=False))
        value.const_value = ir.serde.deserialize_tensor(t, base_path=str(store.folder))
    with common._quiet():
        _graph_passes()(graph)
    m = ir.serde.serialize_model(graph)
    for node in m.graph.node:  # the exporter's per-node trace (FX names, stack traces with local paths)
        del node.metadata_props[:]
    # the exporter names derived dims (P+T) itself; give them stable names
    for vi in list(m.graph.input) + list(m.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param and d.dim_param not in ("batch", "sequence", "past_sequence"):
                d.dim_param = "total_sequence"
    m.doc_string = f"exported by edgekit {edgekit.__version__}"
    return m


def token_gather(model: onnx.ModelProto) -> onnx.NodeProto:
    """The Gather that reads the token embedding: its indices are the graph's ``input_ids``."""
    inits = {i.name for i in model.graph.initializer}
    node = next((n for n in model.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids"
                 and n.input[0] in inits), None)
    if node is None:
        raise ExportError("could not find the token embedding (a Gather of input_ids)")
    return node


def lm_head(model: onnx.ModelProto) -> onnx.NodeProto:
    """The LM head: the projection that reads the token embedding's own (tied) initializer, as
    Gemm(transB=1) or MatMul(Transpose(wte)) (the exporter emits either)."""
    wte = token_gather(model).input[0]
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Gemm" and len(node.input) == 2 and node.input[1] == wte:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transB", 0) == 1 and not attrs.get("transA", 0) and attrs.get("alpha", 1.0) == 1.0:
                return node
        if node.op_type == "MatMul" and node.input[1] in producers \
                and producers[node.input[1]].op_type == "Transpose" and producers[node.input[1]].input[0] == wte:
            return node
    raise ExportError("could not find the LM head (Gemm/MatMul on the token embedding)")


def untie_head(model: onnx.ModelProto, store=None) -> onnx.ModelProto:
    """Give the LM head its own (C, V) initializer as a plain MatMul, for onnxruntime's whole-model
    quantizers (quantize_dynamic, quantize_static), which only quantize MatMuls whose weight is an
    initializer. The block-quantized schemes do not need it: they quantize the tied matrix once."""
    m = _copy(model)
    head, wte = lm_head(m), token_gather(m).input[0]
    t = next(i for i in m.graph.initializer if i.name == wte)
    w = np.ascontiguousarray(np.asarray(store.read(t) if store is not None else onnx.numpy_helper.to_array(t)).T)
    name = "lm_head.weight_t"
    m.graph.initializer.append(store.put(name, w) if store is not None else onnx.numpy_helper.from_array(w, name))
    new = onnx.helper.make_node("MatMul", [head.input[0], name], list(head.output), name="lm_head_matmul")
    idx = list(m.graph.node).index(head)
    m.graph.node.remove(head)
    m.graph.node.insert(idx, new)
    return _prune(m)


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
