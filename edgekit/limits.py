"""Documented limits on every size edgekit reads from a file or an option, checked before anything is allocated.

    from edgekit.limits import LIMITS, check_range
    check_range("n_layer", cfg["n_layer"], 1, LIMITS.n_layer, where="model.onnx config")

A checkpoint, a meta.pkl or a model file may come from a stranger: a size inside it is a claim, checked here
against a bound and (by the caller) against what the file actually carries. The bounds are generous: each
admits GPT-2 XL (48 layers, 25 heads, width 1600, block 1024, vocabulary 50,257 or nanoGPT's padded 50,304)
with room to spare, and refuses sizes that would take gigabytes before a single weight is read. The README's
"Files from strangers" section lists them. Torch-free: the runtime imports it.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class Limits:
    """Upper bounds (inclusive); the comment says why each number."""

    n_layer: int = 256  # GPT-2 XL has 48, the largest public GPT-3 96; 256 still bounds per-layer lists
    n_head: int = 256  # GPT-2 XL has 25; heads must also divide n_embd
    n_embd: int = 16_384  # GPT-2 XL 1600, GPT-3 175B 12,288
    block_size: int = 131_072  # GPT-2 1024; a (block, block) attention mask is 64 GB at 2^17, so no higher
    vocab_size: int = 1_048_576  # GPT-2 50,257 (50,304 padded); Llama 3 128,256; 2^20 rows is room to spare
    tokenizer_entries: int = 1_048_576  # BPE ranks or characters in a tokenizer: at most one per vocabulary row
    pat_str_chars: int = 4_096  # GPT-2's split pattern is 72 characters; longer is not a word splitter
    bytecnn_max_len: int = 1_024  # bytes scored per word (edgekit's presets use 32); a word is not a page
    vector_dim: int = 65_536  # seqae input_dim / bottleneck, amn dim / ctx: 2^16 (MiniLM is 384)
    config_items: int = 4_096  # keys in one model_args/config object
    metadata_bytes: int = 64 << 20  # the edgekit JSON entry: a 1M-entry BPE table is ~10 MB in base64
    metadata_depth: int = 32  # nesting of the metadata JSON (edgekit writes 4 levels)
    toml_depth: int = 16  # nesting of a budgets TOML (edgekit's has 2 levels)
    repeat_last_n: int = 8_192  # --repeat-last-n: 8x GPT-2's block; each step gathers this many recent ids
    max_new_tokens: int = 100_000  # --max-new-tokens and a file's generation default: ~100x a long answer
    seed: int = 2**63 - 1  # --seed: 0 .. 2^63-1 (numpy and torch generators take 64-bit seeds)
    graph_elements: int = 1 << 24  # elements a constant-shape op may ask for (64 MB of fp32), or the file size if larger


LIMITS = Limits()


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_range(name: str, value, low: int, high: int, *, where: str, error=EdgekitError) -> int:
    """``value`` if it is an integer in [low, high]; else ``error`` naming ``where`` and the valid range."""
    if not is_int(value) or not low <= value <= high:
        shown = repr(value) if is_int(value) or isinstance(value, (float, str, type(None))) else type(value).__name__
        raise error(f"{where}: {name} must be an integer from {low:,} to {high:,}; got {shown[:60]}")
    return value


def check_gpt_config(cfg, *, where: str, error=EdgekitError) -> None:
    """A GPT config's sizes within LIMITS, heads dividing the width: before any model or cache is built."""
    if not isinstance(cfg, dict):
        raise error(f"{where}: the model config must be an object; got {type(cfg).__name__}")
    L = LIMITS
    for key, high in (("n_layer", L.n_layer), ("n_head", L.n_head), ("n_embd", L.n_embd),
                      ("block_size", L.block_size), ("vocab_size", L.vocab_size)):
        check_range(key, cfg.get(key), 1, high, where=where, error=error)
    if cfg["n_embd"] % cfg["n_head"]:
        raise error(f"{where}: n_head {cfg['n_head']} must divide n_embd {cfg['n_embd']}")


def json_depth(value, limit: int) -> int:
    """Nesting depth of parsed JSON/TOML, stopping at ``limit + 1`` (no recursion: deep input cannot crash it)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        elif not isinstance(v, (list, tuple)):
            continue
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        stack.extend((x, d + 1) for x in v)
    return deepest
