"""Train bytecnn variants side by side, one process and one thread each, and print one JSON line per run.

    .venv/bin/python examples/bytecnn_sweep.py specs.json --procs 14 --out runs/sweep > results.jsonl

specs.json is a list of runs: {"name": "A3-t10", "base": "nano-cnn", "seed": 1, "threads": 1,
"model": {"emb_dim": 8, "channels": [108]}, "train": {"top_share": 0.1}, "set": {"patience": 100}}.
"model" and "train" override the base preset's ByteCNNConfig and TrainDefaults (the run is registered
as preset "x-<name>", or under "as", e.g. "nano-cnn", so that its checkpoint names that preset); "set"
holds `--set KEY=VALUE` pairs. Each line gives the test Spearman three ways, the Jabberwocky words passed
and the protocol words that failed with their percentile of the top-1,000 scores. The issue-17 sweep
(docs/bytecnn.md, docs/bytecnn_sweep17.json) ran this on a 16-core machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import time
import traceback


def one(job: tuple[dict, str]) -> dict:
    spec, root = job
    import torch

    from edgekit.models import bytecnn as B
    from edgekit.options import TrainOptions
    from edgekit.train import bytecnn as T

    torch.set_num_threads(spec.get("threads", 1))
    name = spec["name"]
    preset = spec.get("base", "nano-cnn")
    base = B.PRESETS[preset]
    if "model" in spec or "train" in spec:
        model = dataclasses.replace(base.model, **{k: tuple(v) if isinstance(v, list) else v
                                                   for k, v in spec.get("model", {}).items()})
        preset = spec.get("as", "x-" + name)
        B.PRESETS[preset] = B.ByteCNNPreset(preset, model, dataclasses.replace(base.train, **spec.get("train", {})))
    out = os.path.join(root, name)
    extra = tuple(f"{k}={v}" for k, v in spec.get("set", {}).items()) + (f"threads={spec.get('threads', 1)}",)
    t0 = time.time()
    try:
        s = T.train(preset, TrainOptions(out=out, seed=spec.get("seed", 1337), progress=False, extra=extra))
    except Exception:  # one failed run is reported, the others go on
        return {"name": name, "spec": spec, "error": traceback.format_exc()[-2000:]}
    with open(os.path.join(out, "train_log.json")) as f:
        jab = json.load(f)["jabberwocky"]
    return {"name": name, "spec": spec, "params": s["params"], "jab": jab["words_passed"], "passed": jab["passed"],
            "mean_ok": jab["mean_ok"], "strat": s["test_spearman_stratified"], "all": s["test_spearman"],
            "top50k": s["test_spearman_top50k"], "top_mean": jab["top_mean"], "best_step": s["best_step"],
            "fails": {r["word"]: round(r["percentile_vs_top"], 3) for r in jab["rows"] if not r["pass"]},
            "sec": round(time.time() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", help="JSON list of runs")
    ap.add_argument("--procs", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--out", default="runs/sweep")
    a = ap.parse_args()
    with open(a.specs) as f:
        specs = json.load(f)
    with mp.get_context("spawn").Pool(a.procs, maxtasksperchild=1) as pool:
        for r in pool.imap_unordered(one, [(s, a.out) for s in specs]):
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
