"""AMN: predict a document's next concept (sentence) vector from the previous ``ctx`` (the notes: 5).

    from edgekit.models.amn import PRESETS, build, preset_config
    model = build(preset_config(PRESETS["amn"]))
    pred = model(context)            # context (B, 5, 384) -> (B, 384)

One attention block reads the context (pre-LayerNorm self-attention, then an MLP). The prediction is an
attention mixture of the context vectors (weights from the block's output) plus a correction the MLP
head computes from the last position, so the model starts near the "mean of the context" baseline and
learns where the next sentence moves away from it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class AMNConfig:
    dim: int = 384  # concept vector size (MiniLM sentence embeddings)
    ctx: int = 5  # context vectors given (the notes' ctx=5)
    d_model: int = 32  # attention width (256 overfits 10k windows within 200 steps; see docs/vectors.md)
    n_head: int = 4  # attention heads
    n_layer: int = 1  # attention + MLP blocks
    mlp_ratio: int = 1  # MLP hidden size = mlp_ratio * d_model
    dropout: float = 0.5  # dropout in training

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainDefaults:
    max_iters: int = 4000  # optimizer steps at most; an epoch is ceil(windows / batch_size) steps
    batch_size: int = 64  # context windows per step
    lr: float = 5e-4  # peak AdamW learning rate (the notes: 5e-4), cosine decay to lr/10
    eval_interval: int = 100  # steps between held-out evaluations
    patience: int = 5  # evaluations without val-loss improvement before stopping
    tokens: int | None = None  # cap on documents (of more than ctx sentences); None = all
    weight_decay: float = 0.1  # AdamW decay on 2-D weights
    infonce: float = 0.0  # weight of an in-batch InfoNCE term (the notes: it made things worse; off)
    temperature: float = 0.07  # InfoNCE temperature
    grad_clip: float = 1.0  # max gradient norm
    ood: str = "auto"  # out-of-distribution corpus: "auto" (pydoc for stdlib, else stdlib), "stdlib", "pydoc", a path


@dataclass(frozen=True)
class AMNPreset:
    name: str
    model: AMNConfig
    train: TrainDefaults
    note: str = ""  # where the configuration comes from
    family: str = field(default="amn", init=False)


PRESETS: dict[str, AMNPreset] = {
    "amn": AMNPreset("amn", AMNConfig(), TrainDefaults(),
                     note="notes 003 584k baseline: ctx=5, MSE only, lr 5e-4 (cos 0.56 in-dist, 0.64 OOD)"),
}


class Block(nn.Module):
    """Pre-LayerNorm self-attention over the context (no causal mask: all of it is the past) and an MLP."""

    def __init__(self, cfg: AMNConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # not "attn": checkpoints drop nanoGPT's *.attn.bias
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)
        self.n_head = cfg.n_head

    def forward(self, x):
        B, T, C = x.shape
        h = self.n_head
        q, k, v = self.qkv(self.ln_1(x)).view(B, T, 3, h, C // h).permute(2, 0, 3, 1, 4)  # (B, h, T, hs) each
        att = F.softmax((q @ k.transpose(-2, -1)) * (C // h) ** -0.5, dim=-1)  # (B, h, T, T)
        x = x + self.drop(self.proj((att @ v).transpose(1, 2).reshape(B, T, C)))
        return x + self.drop(self.mlp(self.ln_2(x)))


class AMN(nn.Module):
    def __init__(self, cfg: AMNConfig):
        super().__init__()
        if cfg.d_model % cfg.n_head:
            raise ValueError(f"d_model {cfg.d_model} is not divisible by n_head {cfg.n_head}")
        self.config = cfg
        self.inp = nn.Linear(cfg.dim, cfg.d_model)
        self.pos = nn.Parameter(torch.zeros(cfg.ctx, cfg.d_model))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.mix = nn.Linear(cfg.d_model, 1)  # a score per context position -> mixture weights
        self.mix_prior = nn.Parameter(torch.zeros(cfg.ctx))  # per-position score: learns recency directly
        self.head = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model), nn.GELU(),
                                  nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.dim))
        nn.init.normal_(self.pos, std=0.02)
        nn.init.zeros_(self.mix.weight)  # start as the plain mean of the context
        nn.init.zeros_(self.head[-1].weight)  # and with no correction
        nn.init.zeros_(self.head[-1].bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, context):
        """context (B, ctx, dim) -> predicted next vector (B, dim)."""
        h = self.inp(context) + self.pos  # (B, ctx, d)
        for block in self.blocks:
            h = block(h)
        h = self.ln_f(h)
        w = F.softmax(self.mix(h).squeeze(-1) + self.mix_prior, dim=1)  # (B, ctx) mixture weights
        base = (w.unsqueeze(-1) * context).sum(1)  # (B, dim) attention mixture of the context
        return base + self.head(h[:, -1])  # (B, dim)


def build(config: dict) -> AMN:
    """An AMN from a config dict (``AMNConfig`` fields; unknown keys ignored)."""
    fields = AMNConfig.__dataclass_fields__
    return AMN(AMNConfig(**{k: v for k, v in config.items() if k in fields}))


def preset_config(preset: AMNPreset) -> dict:
    return preset.model.to_dict()


def num_params(preset: AMNPreset) -> int:
    with torch.device("meta"):
        return AMN(preset.model).num_params()
