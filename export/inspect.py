"""`edgekit inspect`: a model file's metadata, operator counts and size breakdown.

    info = inspect_model("phase3.onnx"); print(render(info))
"""
from __future__ import annotations

import collections
import os

import onnx

from edgekit.errors import ModelFileError
from edgekit.guard import safe_text
from edgekit.registry import FAMILIES
from edgekit.runtime import family_runtime
from edgekit.runtime.modelcard import META_KEY, ModelCard


def _tensor_bytes(t: onnx.TensorProto) -> int:
    if t.data_location == onnx.TensorProto.EXTERNAL:  # weights in <file>.data (models over 2 GB): not read
        return int({e.key: e.value for e in t.external_data}.get("length", 0))
    if t.raw_data:
        return len(t.raw_data)
    return int(onnx.numpy_helper.to_array(t).nbytes)


def _external_size(model_path: str, location: str) -> int | None:
    """Size of an external data file beside the model; None when missing or outside the model's folder (a path
    from the file is not followed out of it, as onnxruntime refuses it too)."""
    folder = os.path.dirname(os.path.abspath(model_path))
    p = os.path.realpath(os.path.join(folder, location))
    if os.path.commonpath([p, os.path.realpath(folder)]) != os.path.realpath(folder):
        return None
    return os.path.getsize(p) if os.path.isfile(p) else None


def _one_group(name: str) -> str:
    return "weights"


def _op_types(graph):
    """Operator types of a graph and of every subgraph inside it (the GPT export's Loop body)."""
    for n in graph.node:
        yield n.op_type
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _op_types(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _op_types(g)


def inspect_model(path: str | os.PathLike) -> dict:
    path = str(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"model file {path!r} does not exist")
    try:
        m = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and others for corrupt files
        raise ModelFileError(f"{path} is not an ONNX model ({type(e).__name__})") from None
    card = ModelCard.from_json({p.key: p.value for p in m.metadata_props}.get(META_KEY), path=path)
    ops = collections.Counter(_op_types(m.graph))
    # the family's hook names the parts; a family this edgekit does not know is still shown, as one group
    group = family_runtime(card.family, path=path).weight_group if card.family in FAMILIES else _one_group
    sizes: dict[str, int] = collections.Counter()
    for init in m.graph.initializer:
        sizes[group(init.name)] += _tensor_bytes(init)
    shown = {k: v for k, v in card.to_dict().items() if k != "tokenizer"}
    tok = card.tokenizer or {}
    if tok:
        shown["tokenizer"] = {k: (f"<{len(v.split())} ranks inline>" if k == "ranks" and isinstance(v, str) else
                                  f"<{len(v)} characters inline>" if k == "itos" and isinstance(v, (list, tuple))
                                  else v) for k, v in tok.items()}
    external = sorted({e.value for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                       for e in t.external_data if e.key == "location"})
    extra = {"external_data": {x: _external_size(path, x) for x in external}} if external else {}
    return {"path": path, "file_bytes": os.path.getsize(path), "metadata": shown, **extra,
            "operators": dict(ops.most_common()), "size_breakdown": dict(sizes),
            "inputs": {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input},
            "outputs": {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output}}


def render(info: dict) -> str:
    meta = info["metadata"]
    lines = [f"{info['path']}: {info['file_bytes']:,} bytes, family {meta['family']}, "
             f"edgekit {meta.get('edgekit_version', '?')}"]
    for loc, size in info.get("external_data", {}).items():
        lines.append(f"external data: {loc} ({'missing' if size is None else f'{size:,} bytes'}; keep it beside the .onnx)")
    lines.append("config: " + ", ".join(f"{k}={v}" for k, v in meta["config"].items()))
    if meta.get("tokenizer"):
        lines.append("tokenizer: " + ", ".join(f"{k}={v}" for k, v in meta["tokenizer"].items()))
    if meta.get("quantization"):
        lines.append("quantization: " + ", ".join(f"{k}={v}" for k, v in meta["quantization"].items()))
    final = (meta.get("verification") or {}).get("final")
    if final:
        lines.append("verification: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in final.items()))
    if meta.get("deploy"):
        lines.append("deploy: " + ", ".join(f"{k}={v}" for k, v in meta["deploy"].items()))
    if meta.get("source_sha256"):
        lines.append(f"source: {meta.get('source_checkpoint')} sha256 {meta['source_sha256'][:16]}...")
    lines.append("inputs: " + ", ".join(f"{k}{v}" for k, v in list(info["inputs"].items())[:4])
                 + (" ..." if len(info["inputs"]) > 4 else ""))
    lines.append("size breakdown:")
    total = sum(info["size_breakdown"].values()) or 1
    for k, v in sorted(info["size_breakdown"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {k:<20}{v:>14,} bytes  {100 * v / total:5.1f}%")
    lines.append("operators: " + ", ".join(f"{k} {v}" for k, v in info["operators"].items()))
    return "\n".join(safe_text(ln, None) for ln in lines)  # metadata is the file's: no control characters reach a terminal
