"""Sequence autoencoder over token vectors (the notes' poetry autoencoder): RNN, GRU or LSTM, 16-d code.

    from edgekit.models.seqae import PRESETS, build, preset_config
    model = build(preset_config(PRESETS["ae-attention"]))
    recon, code = model(x, lengths)                # x (B, T, 384), lengths (B,) -> (B, T, 384), (B, 16)
    recon = model.reconstruct(x, lengths, ablate="code")   # the code zeroed: what bypasses the bottleneck

The encoder reads the vectors and its state at the last real token becomes the 16-d code. The decoder
gets only the code: as its first state and as its input at every step (no teacher forcing, so the
whole decoder is one recurrent op in ONNX and there is no train/inference mismatch). With
``attn_heads`` the decoder also attends to the encoder's states, a path around the bottleneck.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

CELLS = ("rnn", "gru", "lstm")


@dataclass(frozen=True)
class SeqAEConfig:
    input_dim: int = 384  # token vector size (MiniLM's static embeddings; the notes' GloVe had 300)
    hidden: int = 64  # recurrent state size of encoder and decoder
    bottleneck: int = 16  # code size: all the decoder gets when attention is off
    cell: str = "rnn"  # "rnn" (tanh), "gru" or "lstm"
    attn_heads: int = 0  # heads of decoder-to-encoder attention; 0 = none, the code is the only path
    dropout: float = 0.0  # dropout on recurrent outputs, training only

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainDefaults:
    max_iters: int = 3000  # optimizer steps at most; an epoch is ceil(sequences / batch_size) steps
    batch_size: int = 16  # sequences per step (the notes: 16)
    lr: float = 1e-3  # peak Adam learning rate, cosine decay to lr/10
    eval_interval: int = 250  # steps between held-out evaluations
    patience: int = 4  # evaluations without val-loss improvement before stopping
    tokens: int | None = 4000  # cap on training sequences (val and test get 1/8 of it each); None = all
    max_len: int = 32  # tokens per sequence; longer sentences are cut into chunks
    cos_weight: float = 0.9  # hybrid loss: cos_weight * (1 - cosine) + (1 - cos_weight) * MSE (the notes: 0.9)
    grad_clip: float = 1.0  # max gradient norm (the notes: 1.0)
    weight_decay: float = 0.0  # AdamW decay on 2-D weights


@dataclass(frozen=True)
class SeqAEPreset:
    name: str
    model: SeqAEConfig
    train: TrainDefaults
    note: str = ""  # where the configuration comes from
    family: str = field(default="seqae", init=False)


PRESETS: dict[str, SeqAEPreset] = {
    "ae-baseline": SeqAEPreset("ae-baseline", SeqAEConfig(hidden=64, cell="rnn"),
                               TrainDefaults(max_iters=6000, lr=3e-3),
                               note="notes 001 baseline: vanilla RNN, 64 hidden, 16-d code (token cos 0.624)"),
    "ae-scaled": SeqAEPreset("ae-scaled", SeqAEConfig(hidden=512, cell="rnn"),
                             TrainDefaults(lr=8e-4, grad_clip=15.0),
                             note="notes 001 scaled: 512 hidden removes the 64-d pre-bottleneck (lr 8e-4, clip 15)"),
    "ae-attention": SeqAEPreset("ae-attention", SeqAEConfig(hidden=512, cell="lstm", attn_heads=8),
                                TrainDefaults(),
                                note="notes 001 production: LSTM 512 + 8-head attention on encoder states (cos 0.86)"),
}


class CrossAttention(nn.Module):
    """Multi-head attention from decoder states to the encoder's states, padding masked."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden {dim} is not divisible by attn_heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, y, states, key_bias):
        B, T, C = y.shape
        S, h = states.size(1), self.heads
        q = self.q(y).view(B, T, h, C // h).transpose(1, 2)  # (B, h, T, hs)
        k, v = self.kv(states).view(B, S, 2, h, C // h).permute(2, 0, 3, 1, 4)  # (B, h, S, hs) each
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // h)) + key_bias  # (B, h, T, S)
        out = F.softmax(att, dim=-1) @ v  # (B, h, T, hs)
        return self.proj(out.transpose(1, 2).reshape(B, T, C))


class SeqAE(nn.Module):
    def __init__(self, cfg: SeqAEConfig):
        super().__init__()
        if cfg.cell not in CELLS:
            raise ValueError(f"cell {cfg.cell!r}; known: {', '.join(CELLS)}")
        self.config = cfg
        rnn = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cfg.cell]
        self.encoder = rnn(cfg.input_dim, cfg.hidden, batch_first=True)
        self.to_code = nn.Linear(cfg.hidden, cfg.bottleneck)
        self.from_code = nn.Linear(cfg.bottleneck, cfg.hidden)
        self.decoder = rnn(cfg.bottleneck, cfg.hidden, batch_first=True)
        self.attn = CrossAttention(cfg.hidden, cfg.attn_heads) if cfg.attn_heads else None
        self.attn_norm = nn.LayerNorm(cfg.hidden) if cfg.attn_heads else None
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, cfg.input_dim)
        for name, p in self.named_parameters():  # the notes' init: orthogonal recurrent, Xavier input/output
            if "weight_hh" in name:
                nn.init.orthogonal_(p)
            elif p.dim() == 2:
                nn.init.xavier_uniform_(p)
            elif "bias" in name and "norm" not in name:
                nn.init.zeros_(p)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, x, lengths):
        """x (B, T, D), lengths (B,) -> code (B, K) and encoder states (B, T, H)."""
        states, _ = self.encoder(x)  # (B, T, H); a forward RNN's state at t ignores the padding after t
        last = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, states.size(-1))  # (B, 1, H)
        return self.to_code(states.gather(1, last).squeeze(1)), states  # (B, K), (B, T, H)

    def decode(self, code, states, lengths, *, use_attention: bool = True):
        """code (B, K) -> reconstruction (B, T, D), T taken from the encoder states."""
        T = states.size(1)
        h0 = torch.tanh(self.from_code(code)).unsqueeze(0)  # (1, B, H)
        hx = (h0, torch.zeros_like(h0)) if self.config.cell == "lstm" else h0
        y, _ = self.decoder(code.unsqueeze(1).expand(-1, T, -1), hx)  # (B, T, H): the code at every step
        y = self.drop(y)
        if self.attn is not None:
            real = torch.arange(T, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
            key_bias = (~real).to(y.dtype).mul(-1e4).view(-1, 1, 1, T)  # (B, 1, 1, T) padding masked
            a = self.attn(y, states, key_bias)
            y = self.attn_norm(y + (a if use_attention else torch.zeros_like(a)))
        return self.head(y)  # (B, T, D)

    def forward(self, x, lengths):
        """x (B, T, D), lengths (B,) int64 -> reconstruction (B, T, D), code (B, K)."""
        code, states = self.encode(x, lengths)
        return self.decode(code, self.drop(states), lengths), code

    def reconstruct(self, x, lengths, *, ablate: str | None = None):
        """Reconstruction with one path cut: ablate="code" zeroes the code, "attention" the attention output."""
        code, states = self.encode(x, lengths)
        if ablate == "code":
            code = torch.zeros_like(code)
        return self.decode(code, states, lengths, use_attention=ablate != "attention")


def build(config: dict) -> SeqAE:
    """A SeqAE from a config dict (``SeqAEConfig`` fields; unknown keys ignored)."""
    fields = SeqAEConfig.__dataclass_fields__
    return SeqAE(SeqAEConfig(**{k: v for k, v in config.items() if k in fields}))


def preset_config(preset: SeqAEPreset) -> dict:
    return preset.model.to_dict()


def num_params(preset: SeqAEPreset) -> int:
    with torch.device("meta"):
        return SeqAE(preset.model).num_params()
