"""seqae export: one graph (vectors, lengths) -> (reconstruction, code), recurrent ops kept as ONNX ops.

    edgekit export runs/seqae/ae-attention.pt -o ae-attention.onnx --quant auto

GRU and LSTM export with the dynamo exporter (ONNX GRU/LSTM ops); dynamo unrolls a tanh nn.RNN
over the example length, so the vanilla-RNN presets fall back to the TorchScript exporter (ONNX RNN
op); the report says which one ran. Verified against PyTorch on held-out sequences stored in the
checkpoint (or ``--data``'s test split) at several batch sizes; int8 may lose at most 0.01 of
held-out token cosine.
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

QUALITY_BUDGET = 0.01  # int8: held-out token cosine may drop by at most this much


def _heldout(ckpt: Checkpoint, opts: ExportOptions) -> tuple[np.ndarray, np.ndarray]:
    """Held-out token vectors (N, T, 384) and lengths (N,): --data's test split or the checkpoint's sample."""
    if opts.data is not None:
        max_len = ckpt.config.get("train", {}).get("max_len", 32)
        return vectors.token_batch(vectors.token_sequences(opts.data, max_len=max_len, cap=512)["test"][:64])
    ids, lengths = ckpt.extra["heldout_ids"].numpy(), ckpt.extra["heldout_lengths"].numpy()
    return vectors.token_batch([ids[i, :n] for i, n in enumerate(lengths)])


def _token_cosine(x: np.ndarray, lengths: np.ndarray, recon: np.ndarray) -> float:
    """Mean over sequences of the mean token cosine over real tokens."""
    num = (recon * x).sum(-1)
    den = np.linalg.norm(recon, axis=-1) * np.linalg.norm(x, axis=-1) + 1e-8
    mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
    return float(((num / den) * mask).sum(1).__truediv__(mask.sum(1)).mean())


def export(ckpt: Checkpoint, opts: ExportOptions) -> ExportReport:
    started = time.time()
    torch.set_num_threads(1)
    model = ckpt.build_model()
    x, lengths = _heldout(ckpt, opts)
    order = np.argsort(-lengths, kind="stable")
    probes = [{"vectors": x[order[:1], :lengths[order[0]]], "lengths": lengths[order[:1]]},  # one sequence
              {"vectors": x[:8], "lengths": lengths[:8]},  # a padded batch
              {"vectors": x, "lengths": lengths}]  # all of it
    example = (torch.from_numpy(x[:2, :7].copy()), torch.tensor([7, 5]))
    B, T = torch.export.Dim("batch"), torch.export.Dim("time")
    graph, how, note = to_graph(model, args=example, input_names=["vectors", "lengths"],
                                output_names=["reconstruction", "code"],
                                dynamic_shapes=({0: B, 1: T}, {0: B}),
                                dynamic_axes={"vectors": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                                              "reconstruction": {0: "batch", 1: "time"}, "code": {0: "batch"}},
                                check=probes[:2],
                                prefer="torchscript" if ckpt.model_args["cell"] == "rnn" else "dynamo")

    def quality(outputs):
        return _token_cosine(probes[-1]["vectors"], probes[-1]["lengths"], outputs[-1][0])

    cfg = dict(ckpt.model_args)
    one = probes[0]
    meta = {"config": cfg, "input_dim": cfg["input_dim"], "bottleneck": cfg["bottleneck"],
            "vectors": "MiniLM all-MiniLM-L6-v2 static token embeddings (384-d)",
            "text": None,  # no vocabulary in the file: text -> vectors via `python -m edgekit.train.vectors`
            "training_metrics": ckpt.config.get("metrics", {}), "preset": ckpt.config.get("preset"),
            "source_checkpoint": os.path.basename(str(ckpt.path)), "source_sha256": ckpt.sha256,
            "source_iter": ckpt.iter_num}
    candidates = {"int8": {"op_types": ("MatMul", "Gemm"), "per_channel": True}}
    if cfg["cell"] == "lstm":  # onnxruntime quantizes LSTM weights too (RNN and GRU ops stay fp32)
        candidates = {"int8": {"op_types": ("MatMul", "Gemm", "LSTM"), "per_channel": True},
                      "int8-lstm": {"op_types": ("LSTM",), "per_channel": True}}
    return run_pipeline(graph, how, module=model, family="seqae", opts=opts, probes=probes, quality=quality,
                        quality_name="token_cosine", quality_budget=QUALITY_BUDGET, candidates=candidates,
                        timing_feeds=one, meta=meta, exporter_note=note, started=started)
