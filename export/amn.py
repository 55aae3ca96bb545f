"""amn export: one graph context (B, 5, 384) -> next (B, 384), dynamo exporter, verified and measured.

    edgekit export runs/amn/amn.pt -o amn.onnx --quant auto

Verified against PyTorch on held-out windows stored in the checkpoint (or ``--data``'s test split);
int8 may lose at most 0.005 of held-out mean cosine with the true next vector.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from edgekit.export.common import ExportReport
from edgekit.export.vectors import run_pipeline, to_graph
from edgekit.options import ExportOptions
from edgekit.train import vectors
from edgekit.train.checkpoint import Checkpoint

QUALITY_BUDGET = 0.005  # int8: held-out mean cosine with the true next vector may drop by at most this much


def _heldout(ckpt: Checkpoint, opts: ExportOptions, ctx: int) -> tuple[np.ndarray, np.ndarray]:
    if opts.data is not None:
        X, Y = vectors.concept_windows(opts.data, ctx=ctx, cap=64)["test"]
        return X[:256], Y[:256]
    return ckpt.extra["heldout_context"].numpy(), ckpt.extra["heldout_next"].numpy()


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-8)).mean())


def export(ckpt: Checkpoint, opts: ExportOptions) -> ExportReport:
    started = time.time()
    torch.set_num_threads(1)
    model = ckpt.build_model()
    cfg = dict(ckpt.model_args)
    X, Y = _heldout(ckpt, opts, cfg["ctx"])
    probes = [{"context": X[:1]}, {"context": X[:7]}, {"context": X}]
    graph, how, note = to_graph(model, args=(torch.from_numpy(X[:2].copy()),), input_names=["context"],
                                output_names=["next"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                dynamic_axes={"context": {0: "batch"}, "next": {0: "batch"}}, check=probes[:2])

    def quality(outputs):
        return _mean_cosine(outputs[-1][0], Y)

    meta = {"config": cfg, "ctx": cfg["ctx"], "dim": cfg["dim"],
            "vectors": "MiniLM all-MiniLM-L6-v2 sentence embeddings (384-d, unit length)",
            "text": None,  # the MiniLM encoder (90 MB) is not in the file: inputs are vectors (.npy)
            "training_metrics": ckpt.config.get("metrics", {}), "preset": ckpt.config.get("preset"),
            "source_checkpoint": os.path.basename(str(ckpt.path)), "source_sha256": ckpt.sha256,
            "source_iter": ckpt.iter_num}
    candidates = {"int8": {"op_types": ("MatMul", "Gemm"), "per_channel": True}}
    return run_pipeline(graph, how, module=model, family="amn", opts=opts, probes=probes, quality=quality,
                        quality_name="next_cosine", quality_budget=QUALITY_BUDGET, candidates=candidates,
                        timing_feeds=probes[0], meta=meta, exporter_note=note, started=started)
