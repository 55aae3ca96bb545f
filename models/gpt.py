"""nanoGPT-architecture decoder (GPT-2 blocks, tied embeddings) with a KV-cache path for export.

    from edgekit.models.gpt import GPT, GPTConfig, PRESETS
    model = GPT(PRESETS["phase3"].model)            # state-dict names match karpathy/nanoGPT
    logits, loss = model(idx, targets)              # training forward, (B, T, V)
    logits, present = model.forward_cached(idx, mask, past)   # last-position logits + new cache

Parameter names follow nanoGPT's model.py exactly, so its ``ckpt.pt`` files load unchanged.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 64  # longest context in tokens (position embeddings)
    vocab_size: int = 50257  # tokenizer size; nanoGPT pads GPT-2's to 50304
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads per block
    n_embd: int = 96  # model width (channels)
    dropout: float = 0.0  # dropout probability in training
    bias: bool = True  # biases in Linear and LayerNorm, like GPT-2

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainDefaults:
    max_iters: int = 2000  # optimizer steps at most (early stopping may end sooner)
    batch_size: int = 12  # sequences per step
    lr: float = 3e-4  # peak learning rate (AdamW), warmup then cosine decay
    eval_interval: int = 150  # steps between train/val evaluations
    eval_iters: int = 20  # batches averaged per evaluation
    patience: int = 5  # evaluations without val improvement before stopping
    tokens: int | None = None  # cap on dataset tokens; None = the whole corpus (the notes' phases used 1k-23k)
    weight_decay: float = 0.1  # AdamW decay on 2-D weights


@dataclass(frozen=True)
class GPTPreset:
    name: str
    model: GPTConfig
    train: TrainDefaults
    tokenizer: str = "gpt2"  # "gpt2" (offline GPT-2 BPE) or "bpe:<size>" (trained by edgekit)
    note: str = ""  # where the configuration comes from
    family: str = field(default="gpt", init=False)


# The research notes' phases (notes/004) and the showcase model (notes/002).
PRESETS: dict[str, GPTPreset] = {
    "phase0": GPTPreset("phase0", GPTConfig(128, 50257, 6, 6, 384), TrainDefaults(500, 4, 1e-3, 50),
                        note="notes 004 phase 0 (1k tokens there: gap 6.90)"),
    "phase1": GPTPreset("phase1", GPTConfig(16, 50257, 2, 2, 32), TrainDefaults(500, 4, 1e-3, 50),
                        note="notes 004 phase 1 (1k tokens there; embedding is 98% of the parameters)"),
    "phase2": GPTPreset("phase2", GPTConfig(32, 50257, 3, 4, 64), TrainDefaults(1000, 8, 5e-4, 100),
                        note="notes 004 phase 2 (5k tokens there: best generalization, gap 0.17)"),
    "phase3": GPTPreset("phase3", GPTConfig(64, 50257, 4, 4, 96), TrainDefaults(2000, 12, 3e-4, 150),
                        note="notes 004 phase 3 (15k tokens there: the recommended model)"),
    "phase4": GPTPreset("phase4", GPTConfig(128, 50257, 4, 4, 128), TrainDefaults(3000, 16, 1e-4, 200),
                        note="notes 004 phase 4 (23k tokens there: overtrained without early stopping)"),
    "soma": GPTPreset("soma", GPTConfig(128, 576, 3, 4, 128), TrainDefaults(1500, 16, 1e-3, 100, tokens=None),
                      tokenizer="bpe:576", note="notes 002 showcase: 3 layers, 4 heads, d_model 128, 576-token vocabulary"),
    # GPT-2's shapes as karpathy/nanoGPT trains them (config/train_gpt2.py; vocabulary padded to 50,304): the
    # notes' production advice (fine-tune GPT-2) and the sizes issue 21 exports; train them on a GPU
    **{name: GPTPreset(name, GPTConfig(1024, 50304, layers, heads, width), TrainDefaults(2500, 32, 6e-4, 100, patience=8),
                       note=f"GPT-2 {size} shape as nanoGPT trains it (block 1024, vocab padded to 50,304)")
       for name, size, layers, heads, width in (("gpt2", "124M", 12, 12, 768), ("gpt2-medium", "350M", 24, 16, 1024),
                                                ("gpt2-large", "774M", 36, 20, 1280), ("gpt2-xl", "1558M", 48, 25, 1600))},
}


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1); nanoGPT's names."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.dropout = cfg.dropout

    def _heads(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        shape = (B, T, self.n_head, C // self.n_head)
        return (t.view(shape).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self._heads(x)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def forward_cached(self, x, bias, past_k, past_v, mask=None):
        """x (B, T, C); bias (B, 1, T, P+T) additive mask; past (B, nh, P, hs) -> y, present k, v.

        With ``mask`` (B, P+T) given, attention runs as one ``edgekit::cached_attention`` op, which
        export maps to onnxruntime's fused MultiHeadAttention (bias is then unused).
        """
        B, T, C = x.shape
        if mask is not None:
            q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
            y, k, v = torch.ops.edgekit.cached_attention(q, k, v, mask, past_k, past_v, self.n_head)
            return self.c_proj(y), k, v
        q, k, v = self._heads(x)
        k = torch.cat([past_k, k], dim=2)  # (B, nh, P+T, hs)
        v = torch.cat([past_v, v], dim=2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1))) + bias  # (B, nh, T, P+T)
        y = F.softmax(att, dim=-1) @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y), k, v


def _causal_bias(mask: torch.Tensor, T: int, dtype) -> torch.Tensor:
    """(B, P+T) padding mask -> (B, 1, T, P+T) additive bias: causal within the window, no padding."""
    P = mask.shape[1] - T
    q_pos = torch.arange(T, device=mask.device).unsqueeze(1) + P  # (T, 1)
    k_pos = torch.arange(P + T, device=mask.device).unsqueeze(0)  # (1, P+T)
    allowed = (k_pos <= q_pos).unsqueeze(0) & mask.bool().unsqueeze(1)  # (B, T, P+T)
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, -1e4).unsqueeze(1)


@torch.library.custom_op("edgekit::cached_attention", mutates_args=())
def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, past_k: torch.Tensor,
                     past_v: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal multi-head attention over past + new keys: q, k, v (B, T, C); mask (B, P+T); past (B, nh, P, hs)."""
    B, T, C = q.shape
    hs = C // num_heads
    heads = lambda t: t.reshape(B, T, num_heads, hs).transpose(1, 2)  # noqa: E731  (B, nh, T, hs)
    k = torch.cat([past_k, heads(k)], dim=2)
    v = torch.cat([past_v, heads(v)], dim=2)
    att = (heads(q) @ k.transpose(-2, -1)) / math.sqrt(hs) + _causal_bias(mask, T, q.dtype)
    y = (F.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
    return y, k, v


@cached_attention.register_fake
def _(q, k, v, mask, past_k, past_v, num_heads):
    B, T, C = q.shape
    kv = past_k.new_empty(B, num_heads, past_k.shape[2] + T, C // num_heads)
    return q.new_empty(B, T, C), kv, kv.clone()


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x, bias, past_k, past_v, mask=None):
        a, k, v = self.attn.forward_cached(self.ln_1(x), bias, past_k, past_v, mask)
        x = x + a
        return x + self.mlp(self.ln_2(x)), k, v


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Unique parameters, tied head counted once, position embeddings included."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None):
        """idx (B, T) -> logits (B, T, V) and mean cross-entropy when targets are given."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} exceeds block size {self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def forward_cached(self, idx, attention_mask, past: list[torch.Tensor], fused: bool = False):
        """One prefill or decode step with a KV cache.

        idx (B, T) new tokens; attention_mask (B, P+T) with 1 for real tokens, 0 for left padding;
        past: 2*n_layer tensors (B, nh, P, hs), keys then values per layer.
        Returns last-position logits (B, V) and the 2*n_layer present tensors (B, nh, P+T, hs).
        Positions come from the mask (cumsum - 1), so left-padded batches get the right positions.
        ``fused`` routes attention through the ``edgekit::cached_attention`` op (for export).
        """
        B, T = idx.shape
        P = past[0].shape[2]
        mask = attention_mask.to(torch.long)
        pos = (torch.cumsum(mask, dim=1) - 1).clamp(min=0)[:, P:]  # (B, T)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        bias = None if fused else _causal_bias(mask, T, x.dtype)
        present = []
        for i, block in enumerate(self.transformer.h):
            x, k, v = block.forward_cached(x, bias, past[2 * i], past[2 * i + 1], mask if fused else None)
            present += [k, v]
        logits = self.lm_head(self.transformer.ln_f(x[:, -1, :]))  # (B, V) last position only
        return logits, present

    def empty_cache(self, batch: int = 1) -> list[torch.Tensor]:
        cfg = self.config
        hs = cfg.n_embd // cfg.n_head
        return [torch.zeros(batch, cfg.n_head, 0, hs) for _ in range(2 * cfg.n_layer)]


def strip_compile_prefix(state_dict: dict) -> dict:
    """Drop torch.compile's ``_orig_mod.`` prefix and nanoGPT's non-parameter causal-mask buffers."""
    out = {}
    for k, v in state_dict.items():
        k = k[len("_orig_mod."):] if k.startswith("_orig_mod.") else k
        if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
            continue
        out[k] = v
    return out


def build(config: dict) -> GPT:
    """Build a GPT from a config dict (nanoGPT ``model_args`` or edgekit's), ignoring unknown keys."""
    fields = GPTConfig.__dataclass_fields__
    return GPT(GPTConfig(**{k: v for k, v in config.items() if k in fields}))


def preset_config(preset: GPTPreset) -> dict:
    return preset.model.to_dict()


def num_params(preset: GPTPreset) -> int:
    with torch.device("meta"):
        return GPT(preset.model).num_params()


@torch.no_grad()
def generate_cached(model: GPT, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """PyTorch eager greedy decoding with a KV cache: the baseline edgekit's runtime is measured against.

    Runs under ``torch.inference_mode()`` (no autograd bookkeeping): the fastest plain eager loop, so
    the speed-up edgekit reports is against PyTorch at its best, not a handicapped baseline.
    """
    with torch.inference_mode():
        return _greedy_cached(model, prompt_ids, max_new_tokens)


def _greedy_cached(model: GPT, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    idx = torch.tensor([prompt_ids], dtype=torch.long)
    past = model.empty_cache(1)
    mask = torch.ones(1, idx.shape[1], dtype=torch.long)
    out = []
    for _ in range(max_new_tokens):
        logits, past = model.forward_cached(idx, mask, past)
        idx = logits.argmax(-1, keepdim=True)  # (1, 1)
        out.append(int(idx))
        mask = torch.ones(1, mask.shape[1] + 1, dtype=torch.long)
    return out
