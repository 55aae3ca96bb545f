"""Measure a model file the way the benchmark suite does, and hold it to budgets (`edgekit bench`).

    result = bench_model("phase3.onnx", budget_file="my_budgets.toml", threads=1)
    print(render_table(result))      # metric, measured, budget, source, ok

Every metric is named as its budget key (``<family>.<metric>`` in the TOML file; the defaults ship with
edgekit as edgekit/budgets.toml, a copy of benchmarks/budgets.toml):
  all      file_bytes, load_ms, and from fresh processes peak_rss_mb and import_runtime_s
  gpt      file_bytes_over_fp32, worst_scheme_val_loss_delta_pct, worst_scheme_greedy_agreement (the export's
           figures stored in the file), threads2_vs_threads1 (same run, same tokens), decode_tokens_per_s, ttft_ms
  others   the family runtime's ``bench_metrics(model, path)`` (every family defines one)
Speed is budgeted as ratios measured in one run; absolute times are reported, not budgeted by default.
"""
from __future__ import annotations

import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from edgekit.budgets import DEFAULT, describe, evaluate, load_budgets
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


_FRESH = """\
import json, time
t0 = time.perf_counter()
import edgekit.runtime
t1 = time.perf_counter()
m = edgekit.runtime.load({path!r}, threads=1)
t2 = time.perf_counter()
n = len(m.generate("def get_", max_new_tokens=48).token_ids) if m.family == "gpt" else 0
from edgekit.runtime.bench import peak_rss_mb
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "tokens": n, "peak_rss_mb": peak_rss_mb()}}))
"""


def fresh_process(path: str, rounds: int = 3) -> dict:
    """``rounds`` fresh processes: import edgekit.runtime, load ``path``, generate 48 tokens (GPT).

    import_runtime_s is the fastest import (noise only adds), peak_rss_mb the largest peak; the same
    function feeds `edgekit bench` and the pytest suite so the budget keys mean the same thing."""
    runs = []
    for _ in range(rounds):
        r = subprocess.run([sys.executable, "-c", _FRESH.format(path=str(path))], capture_output=True, text=True)
        if r.returncode:
            raise EdgekitError(f"a fresh process could not load {path}: {r.stderr.strip()[-300:]}")
        runs.append(json.loads(r.stdout))
    return {"import_runtime_s": min(x["import_s"] for x in runs), "load_s": statistics.median(x["load_s"] for x in runs),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in runs), "tokens": runs[-1]["tokens"]}


def threads_ratio(path: str, *, prompt_ids: list[int], new_tokens: int = 48, rounds: int = 7) -> tuple[float, list]:
    """Greedy decode tokens/s at 2 threads over 1 thread, rounds interleaved (one run), and the outputs.

    Returns (ratio of medians, [tokens at 1 thread, tokens at 2 threads]) so callers can check the
    answers are the same."""
    from edgekit.runtime.gpt import SamplingOptions

    lm1, lm2 = load(path, threads=1), load(path, threads=2)
    opts = SamplingOptions(max_new_tokens=new_tokens, heal=False)
    lm1._run([prompt_ids], opts), lm2._run([prompt_ids], opts)  # warm-up
    one, two = [], []
    for _ in range(rounds):
        g1 = lm1._run([prompt_ids], opts)[0]
        g2 = lm2._run([prompt_ids], opts)[0]
        one.append(g1.tokens_per_s)
        two.append(g2.tokens_per_s)
    return statistics.median(two) / statistics.median(one), [g1.token_ids, g2.token_ids]


def quality_from_file(meta: dict) -> dict:
    """The export's own figures, stored in the file: worst held-out loss delta and greedy agreement over
    the schemes it accepted (measured on the report half of its held-out tokens, not the half it chose on)."""
    steps = [s for s in meta.get("verification", {}).get("steps", []) if s["step"].startswith("quantize:")]
    accepted = [s["parity"] for s in steps if s["ok"]]
    if not accepted:
        return {}
    return {"worst_scheme_val_loss_delta_pct": max(p["val_loss_delta_pct"] for p in accepted),
            "worst_scheme_greedy_agreement": min(p["greedy_agreement"] for p in accepted)}


def fp32_bytes(meta: dict) -> int | None:
    """The fp32 graph's size as the export recorded it (the last fp32 step before quantization)."""
    sizes = [s["bytes"] for s in meta.get("verification", {}).get("steps", [])
             if s["step"] in ("export", "simplify", "optimize") and s["ok"]]
    return sizes[-1] if sizes else None


def gpt_metrics(lm, path: str, *, prompt: str = "def get_value(self, key):\n", new_tokens: int = 48,
                rounds: int = 7) -> dict:
    """GPT bench hook: metrics named as their budget keys (file_bytes_over_fp32, the export's worst-scheme
    quality, threads2_vs_threads1; peak_rss_mb and import_runtime_s come from bench_model), plus the
    unbudgeted absolute decode tokens/s and time to first token (medians over ``rounds``)."""
    from edgekit.runtime.gpt import SamplingOptions

    ids = lm.tokenizer.encode(prompt)[:8]
    opts = SamplingOptions(max_new_tokens=new_tokens, heal=False)
    lm._run([ids], opts)  # warm-up
    rates, ttfts = [], []
    for _ in range(rounds):
        g = lm._run([ids], opts)[0]
        rates.append(g.tokens_per_s)
        ttfts.append(g.ttft_ms)
    out = {}
    fp32 = fp32_bytes(lm.meta)
    if fp32:
        out["file_bytes_over_fp32"] = os.path.getsize(path) / fp32
    out.update(quality_from_file(lm.meta))
    ratio, (t1, t2) = threads_ratio(path, prompt_ids=ids, new_tokens=new_tokens, rounds=rounds)
    if t1 != t2:
        raise EdgekitError(f"{path}: 2 threads decode different tokens than 1 thread ({t1[:8]} vs {t2[:8]})")
    out["threads2_vs_threads1"] = ratio
    out["decode_tokens_per_s"] = statistics.median(rates)
    out["ttft_ms"] = statistics.median(ttfts)
    return out


def bench_model(path: str, *, budget_file: str | None = None, threads: int = 1) -> dict:
    if budget_file is not None and not os.path.isfile(budget_file):
        raise EdgekitError(f"budget file {budget_file!r} does not exist")
    try:
        budgets = load_budgets(budget_file)
    except (OSError, ValueError) as e:
        raise EdgekitError(f"cannot read budgets {budget_file or DEFAULT}: {e}") from None
    t0 = time.perf_counter()
    model = load(path, threads=threads)
    metrics = {"load_ms": (time.perf_counter() - t0) * 1e3, "file_bytes": os.path.getsize(path)}
    if model.family == "gpt":
        metrics.update(gpt_metrics(model, path))
    else:
        module = importlib.import_module(f"edgekit.runtime.{model.family}")
        metrics.update(module.bench_metrics(model, path))
    fresh = fresh_process(path)
    metrics["peak_rss_mb"], metrics["import_runtime_s"] = fresh["peak_rss_mb"], fresh["import_runtime_s"]
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
            "scheme": model.meta.get("quantization", {}).get("scheme", "fp32"), "rows": rows,
            "budgeted": sum(bool(r["budget"]) for r in rows)}


def render_table(result: dict) -> str:
    w = max([len("metric"), *(len(r["metric"]) for r in result["rows"])]) + 2
    lines = [f"{result['model']} ({result['family']}, {result['scheme']}, {result['threads']} thread(s))",
             f"{'metric':<{w}}{'measured':>14}  {'budget':<16}{'status':<8}source"]
    for r in result["rows"]:
        bound = " ".join(f"{'>=' if k == 'min' else '<='} {v:g}" for k, v in r["budget"].items())
        status = "-" if not r["budget"] else ("ok" if r["ok"] else "BROKEN")
        lines.append(f"{r['metric']:<{w}}{r['measured']:>14,.3f}  {bound:<16}{status:<8}{r['source']}")
    broken = [r["message"] for r in result["rows"] if not r["ok"]]
    lines += [f"BROKEN {m}" for m in broken]
    return "\n".join(lines)


def p50_us(fn, calls: int = 300) -> float:
    """Median wall time of ``fn()`` in microseconds after a short warm-up."""
    for _ in range(min(50, calls)):
        fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6
