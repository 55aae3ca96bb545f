"""seqae export: one graph (vectors, lengths) -> (reconstruction, code), recurrent ops kept as ONNX ops.

    edgekit export runs/seqae/ae-attention.pt -o ae-attention.onnx --quant auto

GRU and LSTM export with the dynamo exporter (ONNX GRU/LSTM ops); dynamo unrolls a tanh nn.RNN
over the example length, so the vanilla-RNN presets fall back to the TorchScript exporter (ONNX RNN
op); the report says which one ran. Verified against PyTorch on held-out sequences stored in the
checkpoint (or ``--data``'s test split) at several batch sizes; int8 may lose at most 0.01 of
held-out token cosine.
"""
from __future__ import annotations

import numpy as np
import torch

from edgekit.errors import ExportError
from edgekit.export import pipeline
from edgekit.export.common import ExportReport
from edgekit.export.vectors import VectorExport
from edgekit.limits import check_range
from edgekit.options import ExportOptions
from edgekit.train import vectors
from edgekit.train.checkpoint import Checkpoint

QUALITY_BUDGET = 0.01  # int8: held-out token cosine may drop by at most this much


def _heldout(ckpt: Checkpoint, opts: ExportOptions) -> tuple[np.ndarray, np.ndarray]:
    """Held-out token vectors (N, T, 384) and lengths (N,): --data's test split or the checkpoint's sample."""
    if opts.data is not None:
        train = ckpt.config.get("train")
        max_len = train.get("max_len", 32) if isinstance(train, dict) else 32
        check_range("config.train.max_len", max_len, 1, 4096, where=f"checkpoint {ckpt.path}", error=ExportError)
        return vectors.token_batch(vectors.token_sequences(opts.data, max_len=max_len, cap=512)["test"][:64])
    ids, lengths = ckpt.extra.get("heldout_ids"), ckpt.extra.get("heldout_lengths")
    if not (isinstance(ids, torch.Tensor) and isinstance(lengths, torch.Tensor) and ids.dim() == 2
            and lengths.dim() == 1 and len(lengths) == len(ids) and not ids.is_floating_point()):
        raise ExportError(f"checkpoint {ckpt.path} lacks its held-out sample (heldout_ids, heldout_lengths); "
                          "pass --data to verify on text")
    ids, lengths = ids.numpy(), lengths.numpy().clip(0, ids.shape[1])
    return vectors.token_batch([ids[i, :n] for i, n in enumerate(lengths)])


def _token_cosine(x: np.ndarray, lengths: np.ndarray, recon: np.ndarray) -> float:
    """Mean over sequences of the mean token cosine over real tokens."""
    num = (recon * x).sum(-1)
    den = np.linalg.norm(recon, axis=-1) * np.linalg.norm(x, axis=-1) + 1e-8
    mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
    return float(((num / den) * mask).sum(1).__truediv__(mask.sum(1)).mean())


class SeqaeExport(VectorExport):
    family = "seqae"
    input_names = ("vectors", "lengths")
    output_names = ("reconstruction", "code")
    dynamic_axes = {"vectors": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                    "reconstruction": {0: "batch", 1: "time"}, "code": {0: "batch"}}
    schemes = {"int8-dynamic": ("int8", "int8-lstm")}  # int8-lstm: LSTM cells only
    quality_name = "token_cosine"
    quality_budget = QUALITY_BUDGET

    def setup(self):
        x, lengths = _heldout(self.ckpt, self.opts)
        order = np.argsort(-lengths, kind="stable")
        self.prefer = "torchscript" if self.ckpt.model_args["cell"] == "rnn" else "dynamo"
        return [{"vectors": x[order[:1], :lengths[order[0]]], "lengths": lengths[order[:1]]},  # one sequence
                {"vectors": x[:8], "lengths": lengths[:8]},  # a padded batch
                {"vectors": x, "lengths": lengths}]  # all of it

    def int8_recipes(self):
        if self.cfg["cell"] != "lstm":
            return super().int8_recipes()
        # onnxruntime quantizes LSTM weights too (RNN and GRU ops stay fp32)
        return {"int8": {"op_types": ("MatMul", "Gemm", "LSTM"), "per_channel": True},
                "int8-lstm": {"op_types": ("LSTM",), "per_channel": True}}

    def dummy_inputs(self):
        return (torch.from_numpy(self.probes[-1]["vectors"][:2, :7].copy()), torch.tensor([7, 5]))

    def dynamic_shapes(self):
        B, T = torch.export.Dim("batch"), torch.export.Dim("time")
        return ({0: B, 1: T}, {0: B})

    def quality(self, outputs):
        return _token_cosine(self.probes[-1]["vectors"], self.probes[-1]["lengths"], outputs[-1][0])

    def family_meta(self):
        cfg = self.cfg
        return {"config": cfg, "input_dim": cfg["input_dim"], "bottleneck": cfg["bottleneck"],
                "vectors": "MiniLM all-MiniLM-L6-v2 static token embeddings (384-d)",
                "text": None,  # no vocabulary in the file: text -> vectors via `python -m edgekit.train.vectors`
                "training_metrics": self.ckpt.config.get("metrics", {}), "preset": self.ckpt.config.get("preset")}


def export(ckpt: Checkpoint, opts: ExportOptions) -> ExportReport:
    return pipeline.run(SeqaeExport, ckpt, opts)
