"""amn export: one graph context (B, 5, 384) -> next (B, 384), dynamo exporter, verified and measured.

    edgekit export runs/amn/amn.pt -o amn.onnx --quant auto

Verified against PyTorch on held-out windows stored in the checkpoint (or ``--data``'s test split);
int8 may lose at most 0.005 of held-out mean cosine with the true next vector.
"""
from __future__ import annotations

import numpy as np
import torch

from edgekit.export import pipeline
from edgekit.export.common import ExportReport
from edgekit.export.vectors import VectorExport
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


class AmnExport(VectorExport):
    family = "amn"
    input_names = ("context",)
    output_names = ("next",)
    dynamic_axes = {"context": {0: "batch"}, "next": {0: "batch"}}
    quality_name = "next_cosine"
    quality_budget = QUALITY_BUDGET

    def setup(self):
        X, self.Y = _heldout(self.ckpt, self.opts, self.ckpt.model_args["ctx"])
        return [{"context": X[:1]}, {"context": X[:7]}, {"context": X}]

    def dummy_inputs(self):
        return (torch.from_numpy(self.probes[-1]["context"][:2].copy()),)

    def dynamic_shapes(self):
        return ({0: torch.export.Dim("batch")},)

    def quality(self, outputs):
        return _mean_cosine(outputs[-1][0], self.Y)

    def family_meta(self):
        cfg = self.cfg
        return {"config": cfg, "ctx": cfg["ctx"], "dim": cfg["dim"],
                "vectors": "MiniLM all-MiniLM-L6-v2 sentence embeddings (384-d, unit length)",
                "text": None,  # the MiniLM encoder (90 MB) is not in the file: inputs are vectors (.npy)
                "training_metrics": self.ckpt.config.get("metrics", {}), "preset": self.ckpt.config.get("preset")}


def export(ckpt: Checkpoint, opts: ExportOptions) -> ExportReport:
    return pipeline.run(AmnExport, ckpt, opts)
