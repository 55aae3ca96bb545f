"""GPT's family hooks for ``edgekit bench`` and ``edgekit inspect`` (``edgekit.runtime.gpt`` re-exports them,
so ``family_runtime("gpt")`` finds them): decode rate, thread scaling, the export's stored quality, weight groups.

    ratio, (t1, t2) = threads_ratio("phase3.onnx", prompt_ids=ids)   # tokens/s at 2 threads over 1
    metrics = bench_metrics(lm, "phase3.onnx")                        # names = budget keys
"""
from __future__ import annotations

import os
import statistics
from typing import TYPE_CHECKING

from edgekit.errors import EdgekitError
from edgekit.runtime.gpt_sampling import SamplingOptions

if TYPE_CHECKING:
    from edgekit.runtime.gpt import GPTModel
    from edgekit.runtime.modelcard import ModelCard


def threads_ratio(path: str, *, prompt_ids: list[int], new_tokens: int = 48, rounds: int = 7) -> tuple[float, list]:
    """Greedy decode tokens/s at 2 threads over 1 thread, rounds interleaved (one run), and the outputs.

    Returns (median of per-round ratios, [tokens at 1 thread, tokens at 2 threads]) so callers can check the
    answers are the same."""
    from edgekit.runtime import load

    lm1, lm2 = load(path, threads=1), load(path, threads=2)
    opts = SamplingOptions(max_new_tokens=new_tokens, heal=False)
    lm1.run([prompt_ids], opts), lm2.run([prompt_ids], opts)  # warm-up
    one, two = [], []
    for _ in range(rounds):
        g1 = lm1.run([prompt_ids], opts)[0]
        g2 = lm2.run([prompt_ids], opts)[0]
        one.append(g1.tokens_per_s)
        two.append(g2.tokens_per_s)
    return statistics.median(b / a for a, b in zip(one, two)), [g1.token_ids, g2.token_ids]


def quality_from_file(card: ModelCard) -> dict:
    """The export's own figures, stored in the file: worst held-out loss delta and greedy agreement over
    the schemes it accepted (measured on the report half of its held-out tokens, not the half it chose on)."""
    steps = [s for s in card.verification.get("steps", ()) if s["step"].startswith("quantize:")]
    accepted = [s["parity"] for s in steps if s["ok"]]
    if not accepted:
        return {}
    return {"worst_scheme_val_loss_delta_pct": max(p["val_loss_delta_pct"] for p in accepted),
            "worst_scheme_greedy_agreement": min(p["greedy_agreement"] for p in accepted)}


def bench_metrics(lm: GPTModel, path: str, *, prompt: str = "def get_value(self, key):\n", new_tokens: int = 48,
                  rounds: int = 7) -> dict:
    """`edgekit bench` hook: metrics named as their budget keys (file_bytes_over_fp32, the export's worst-scheme
    quality, threads2_vs_threads1; peak_rss_mb and import_runtime_s come from bench_model), plus the
    unbudgeted absolute decode tokens/s and time to first token (medians over ``rounds``)."""
    from edgekit.runtime.bench import fp32_bytes

    ids = lm.tokenizer.encode(prompt)[:8]
    opts = SamplingOptions(max_new_tokens=new_tokens, heal=False)
    lm.run([ids], opts)  # warm-up
    rates, ttfts = [], []
    for _ in range(rounds):
        g = lm.run([ids], opts)[0]
        rates.append(g.tokens_per_s)
        ttfts.append(g.ttft_ms)
    out = {}
    fp32 = fp32_bytes(lm.card)
    if fp32:
        out["file_bytes_over_fp32"] = os.path.getsize(path) / fp32
    out.update(quality_from_file(lm.card))
    ratio, (t1, t2) = threads_ratio(path, prompt_ids=ids, new_tokens=new_tokens, rounds=rounds)
    if t1 != t2:
        raise EdgekitError(f"{path}: 2 threads decode different tokens than 1 thread ({t1[:8]} vs {t2[:8]})")
    out["threads2_vs_threads1"] = ratio
    out["decode_tokens_per_s"] = statistics.median(rates)
    out["ttft_ms"] = statistics.median(ttfts)
    return out


def bench_workload(lm: GPTModel) -> int:
    """What a fresh process runs before `edgekit bench` reads its peak memory: 48 greedy tokens."""
    return len(lm.generate("def get_", max_new_tokens=48).token_ids)


def weight_group(name: str) -> str:
    """`edgekit inspect` hook: which part of the model an initializer belongs to, for the size breakdown."""
    if "wte" in name or "lm_head" in name:
        return "token_embedding"
    if "wpe" in name:
        return "position_embedding"
    return "transformer"


def serve_engine(lm: GPTModel, *, slots: int, max_queue: int):
    """`edgekit serve` hook: the continuous-batching engine behind ``/v1/completions`` (runtime/gpt_batch.py)."""
    from edgekit.runtime.gpt_batch import BatchEngine

    return BatchEngine(lm, slots=slots, max_queue=max_queue)


def serve_routes(lm: GPTModel) -> dict:
    """`edgekit serve` hook: llama-server's ``/tokenize`` {"content"} -> {"tokens"} and ``/detokenize``
    {"tokens"} -> {"content"}."""
    from edgekit.errors import UsageError

    def tokenize(body: dict) -> dict:
        text = body.get("content")
        if not isinstance(text, str):
            raise UsageError("content must be a string")
        return {"tokens": lm.tokenizer.encode(text) if text else []}

    def detokenize(body: dict) -> dict:
        ids = body.get("tokens")
        if not isinstance(ids, list) or any(not isinstance(t, int) or isinstance(t, bool)
                                            or not 0 <= t < lm.vocab_size for t in ids):
            raise UsageError(f"tokens must be a list of token ids from 0 to {lm.vocab_size - 1}")
        return {"content": lm.tokenizer.decode(ids)}

    return {"/tokenize": tokenize, "/detokenize": detokenize}
