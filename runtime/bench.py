"""Measure a model file the way the benchmark suite does, and hold it to budgets (`edgekit bench`).

    result = bench_model("phase3.onnx", budget_file="my_budgets.toml", threads=1)
    print(render_table(result))      # metric, measured, budget, source, ok

Metrics per family (budget keys are ``<family>.<metric>`` in the TOML file):
  gpt      file_bytes, decode_tokens_per_s, ttft_ms, prefill_ms, peak_rss_mb
  others   file_bytes, and the family runtime's ``bench_metrics(model)`` when it defines one.
Absolute speed budgets are only as good as the machine is quiet; the pytest suite gates speed with
ratios against PyTorch measured in the same run.
"""
from __future__ import annotations

import importlib
import os
import resource
import statistics
import time

from edgekit.budgets import describe, evaluate, load_budgets
from edgekit.errors import EdgekitError
from edgekit.runtime import load


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    VmHWM from /proc where there is one: ru_maxrss survives exec on Linux, so a process started by a
    big parent (pytest with torch loaded) would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpt_metrics(lm, *, prompt: str = "def get_value(self, key):\n", new_tokens: int = 48, rounds: int = 7) -> dict:
    """Decode tokens/s, time to first token and prefill latency, medians over ``rounds``."""
    from edgekit.runtime.gpt import SamplingOptions

    ids = lm.tokenizer.encode(prompt)[:8]
    opts = SamplingOptions(max_new_tokens=new_tokens, heal=False)
    lm._run([ids], opts)  # warm-up
    rates, ttfts, prefills = [], [], []
    block_prompt = (ids * lm.block_size)[: lm.block_size - 1]
    for _ in range(rounds):
        g = lm._run([ids], opts)[0]
        rates.append(g.tokens_per_s)
        ttfts.append(g.ttft_ms)
        t0 = time.perf_counter()
        lm._prefill([block_prompt])
        prefills.append((time.perf_counter() - t0) * 1e3)
    return {"decode_tokens_per_s": statistics.median(rates), "ttft_ms": statistics.median(ttfts),
            "prefill_ms": statistics.median(prefills)}


def bench_model(path: str, *, budget_file: str | None = None, threads: int = 1) -> dict:
    if budget_file is not None and not os.path.isfile(budget_file):
        raise EdgekitError(f"budget file {budget_file!r} does not exist")
    try:
        budgets = load_budgets(budget_file)
    except (OSError, ValueError) as e:
        raise EdgekitError(f"cannot read budgets {budget_file or 'benchmarks/budgets.toml'}: {e}") from None
    t0 = time.perf_counter()
    model = load(path, threads=threads)
    metrics = {"load_ms": (time.perf_counter() - t0) * 1e3, "file_bytes": os.path.getsize(path)}
    if model.family == "gpt":
        metrics.update(gpt_metrics(model))
    else:
        module = importlib.import_module(f"edgekit.runtime.{model.family}")
        if hasattr(module, "bench_metrics"):
            metrics.update(module.bench_metrics(model))
    metrics["peak_rss_mb"] = peak_rss_mb()
    rows = []
    for name, value in metrics.items():
        key = f"{model.family}.{name}"
        if key in budgets:
            b = budgets[key]
            rows.append({"metric": name, "measured": value, "budget": {k: b[k] for k in ("min", "max") if k in b},
                         "unit": b.get("unit", ""), "source": b["source"], "ok": evaluate(b, value),
                         "message": describe(key, b, value)})
        else:
            rows.append({"metric": name, "measured": value, "budget": {}, "unit": "", "source": "", "ok": True,
                         "message": ""})
    return {"model": path, "family": model.family, "threads": threads,
            "scheme": model.meta.get("quantization", {}).get("scheme", "fp32"), "rows": rows}


def render_table(result: dict) -> str:
    lines = [f"{result['model']} ({result['family']}, {result['scheme']}, {result['threads']} thread(s))",
             f"{'metric':<22}{'measured':>14}  {'budget':<16}{'status':<8}source"]
    for r in result["rows"]:
        bound = " ".join(f"{'>=' if k == 'min' else '<='} {v:g}" for k, v in r["budget"].items())
        status = "-" if not r["budget"] else ("ok" if r["ok"] else "BROKEN")
        lines.append(f"{r['metric']:<22}{r['measured']:>14,.3f}  {bound:<16}{status:<8}{r['source']}")
    broken = [r["message"] for r in result["rows"] if not r["ok"]]
    lines += [f"BROKEN {m}" for m in broken]
    return "\n".join(lines)
