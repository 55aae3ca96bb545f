"""`make demo`: train the small-vocabulary showcase model on the stdlib, export it, complete "def get_".

It ends with the same prompt on the reference soma model shipped in examples/reference (trained on a
GPU on the whole stdlib), to show what more training buys.

Runs the same commands a user would type, times each, and prints what it did. The training run is
capped at 150 seconds so the whole demo fits in about three minutes on a 2-core machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("EDGEKIT_DEMO_OUT", "runs/demo"))
EDGEKIT = [sys.executable, "-m", "edgekit.cli"]


def run(title: str, *args: str, capture: bool = False) -> tuple[float, str]:
    print(f"\n$ edgekit {' '.join(args)}", flush=True)
    t0 = time.time()
    r = subprocess.run([*EDGEKIT, *args], stdout=subprocess.PIPE if capture else None, text=True)
    if r.returncode:
        sys.exit(f"demo: {title} failed (exit {r.returncode})")
    return time.time() - t0, r.stdout or ""


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    t_train, out = run("training", "train", "soma", "--out", str(OUT), "--max-iters", "1200", "--eval-interval", "100",
                       "--time-budget", "150", "--json", capture=True)
    summary = json.loads(out)
    t_export, _ = run("export", "export", str(OUT / "soma.pt"), "-o", str(OUT / "soma.onnx"))
    t_infer, _ = run("inference", "infer", str(OUT / "soma.onnx"), "def get_", "--max-new-tokens", "48")
    _, js = run("inference", "infer", str(OUT / "soma.onnx"), "import ", "--max-new-tokens", "48", "--json",
                "--threads", "1", capture=True)
    g = json.loads(js)
    ref = Path(__file__).with_name("reference") / "soma-stdlib.onnx"
    print(f"\nFor comparison, the shipped reference soma (same preset, trained on a GPU on the whole stdlib "
          f"for 98M tokens, {ref}):")
    run("inference", "infer", str(ref), "def get_", "--max-new-tokens", "48")
    print("\n--- what the demo did ---")
    print(f"trained soma ({summary['params']:,} parameters, 576-token BPE vocabulary trained by edgekit) on "
          f"{summary['train_tokens']:,} tokens of the Python standard library: {summary['steps']} steps in "
          f"{t_train:.0f}s, best val loss {summary['best_val_loss']:.3f} at step {summary['best_step']}")
    size = (OUT / "soma.onnx").stat().st_size
    print(f"exported {OUT / 'soma.onnx'} ({size:,} bytes, verified and quantized) in {t_export:.0f}s")
    print(f"completed 'import ' at {g['tokens_per_s']:,.0f} tokens/s on 1 thread "
          f"(first token after {g['ttft_ms']:.1f} ms)")
    print(f"total {t_train + t_export + t_infer:.0f}s; curves: {OUT / 'soma_curves.png'}")


if __name__ == "__main__":
    main()
