"""Measure a model file the way the benchmark suite does, and hold it to budgets (`edgekit bench`).

    result = bench_model("phase3.onnx", budget_file="my_budgets.toml", threads=1)
    result["rows"]                   # metric, measured, budget, source, ok (the CLI renders the table)

Every metric is named as its budget key (``<family>.<metric>`` in the TOML file; the defaults ship with
edgekit as edgekit/budgets.toml, a copy of benchmarks/budgets.toml):
  all      file_bytes, load_ms, and from fresh processes peak_rss_mb and import_runtime_s (after the family's
           ``bench_workload(model)``)
  family   its runtime module's ``bench_metrics(model, path)`` hook (every family defines one; GPT's: the
           export's figures stored in the file, threads2_vs_threads1, decode_tokens_per_s, ttft_ms)
Speed is budgeted as ratios measured in one run; absolute times are reported, not budgeted by default.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from edgekit.budgets import DEFAULT, describe, evaluate, load_budgets
from edgekit.errors import EdgekitError
from edgekit.guard import safe_text
from edgekit.runtime import family_runtime, load
from edgekit.runtime.modelcard import ModelCard


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
import json, sys, time
t0 = time.perf_counter()
import edgekit.runtime
t1 = time.perf_counter()
try:
    m = edgekit.runtime.load({path!r}, threads=1)
    t2 = time.perf_counter()
    n = edgekit.runtime.family_runtime(m.family).bench_workload(m)
except BaseException as e:  # one line for the parent to report (a traceback is not an error message)
    print(json.dumps({{"error": f"{{type(e).__name__}}: {{e}}"}}))
    sys.exit(1)
from edgekit.runtime.bench import peak_rss_mb
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "tokens": n, "peak_rss_mb": peak_rss_mb()}}))
"""


def _child_error(r: subprocess.CompletedProcess) -> str:
    """The one line a failed fresh process reported, else the last line it wrote to stderr."""
    try:
        return str(json.loads(r.stdout.strip().splitlines()[-1])["error"])
    except (ValueError, KeyError, IndexError, TypeError):
        lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit status {r.returncode}"



def fresh_process(path: str, rounds: int = 3) -> dict:
    """``rounds`` fresh processes: import edgekit.runtime, load ``path``, run the family's ``bench_workload``
    (GPT: generate 48 tokens; ``tokens`` is what it returns).

    import_runtime_s is the fastest import (noise only adds), peak_rss_mb the largest peak; the same
    function feeds `edgekit bench` and the pytest suite so the budget keys mean the same thing."""
    runs = []
    for _ in range(rounds):
        # -P: the child must import the installed edgekit, not an `edgekit/` folder in the working directory
        # (a source checkout's root holds one without the package-dir mapping)
        r = subprocess.run([sys.executable, "-P", "-c", _FRESH.format(path=str(os.path.abspath(path)))],
                           capture_output=True, text=True)
        if r.returncode:
            raise EdgekitError(f"a fresh process could not load {path}: {safe_text(_child_error(r), 300)}")
        runs.append(json.loads(r.stdout))
    return {"import_runtime_s": min(x["import_s"] for x in runs), "load_s": statistics.median(x["load_s"] for x in runs),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in runs), "tokens": runs[-1]["tokens"]}


def fp32_bytes(card: ModelCard) -> int | None:
    """The fp32 graph's size as the export recorded it (the last fp32 step before quantization)."""
    sizes = [s["bytes"] for s in card.verification.get("steps", ())
             if s["step"] in ("export", "simplify", "optimize") and s["ok"]]
    return sizes[-1] if sizes else None


def bench_model(path: str, *, budget_file: str | None = None, threads: int = 1) -> dict:
    if budget_file is not None and not os.path.isfile(budget_file):
        raise EdgekitError(f"budget file {budget_file!r} does not exist")
    try:
        budgets = load_budgets(budget_file)
    except (OSError, ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise EdgekitError(f"cannot read budgets {budget_file or DEFAULT}: {safe_text(why, 200)}") from None
    t0 = time.perf_counter()
    model = load(path, threads=threads)
    metrics = {"load_ms": (time.perf_counter() - t0) * 1e3, "file_bytes": os.path.getsize(path)}
    metrics.update(family_runtime(model.family).bench_metrics(model, path))
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
            "scheme": model.card.quantization.scheme, "target": model.card.deploy.target, "rows": rows,
            "budgeted": sum(bool(r["budget"]) for r in rows)}


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
