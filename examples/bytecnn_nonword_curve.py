"""The non-word ratio curve: Jabberwocky passes and rank quality against the share of non-words per batch.

    .venv/bin/python examples/bytecnn_nonword_curve.py --out runs/curve                     # trains, then draws
    .venv/bin/python examples/bytecnn_nonword_curve.py --out runs/curve --ratios 0,0.1,0.2 --max-iters 3000
    .venv/bin/python examples/bytecnn_nonword_curve.py --out runs/curve --plot-only          # redraw curve.json

One `edgekit train <preset> --set nonwords=R` per ratio, one after another (one thread each, niced), same
seed; each run's figures come from its own train_log.json (test split: all words, Zipf-band-stratified,
top-50k; the Jabberwocky Protocol). Writes <out>/curve.json and <out>/curve.png (matplotlib).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def train_one(preset: str, ratio: float, out: Path, max_iters: int | None) -> dict:
    run = out / f"{preset}-nw{ratio:g}"
    if not (run / "train_log.json").is_file():
        cmd = [sys.executable, "-m", "edgekit.cli", "train", preset, "--out", str(run), "--set", "threads=1",
               "--set", f"nonwords={ratio:g}", "--quiet"]
        if max_iters:
            cmd += ["--max-iters", str(max_iters)]
        subprocess.run(["nice", *cmd], check=True)
    log = json.loads((run / "train_log.json").read_text())
    s, jab = log["summary"], log["jabberwocky"]
    return {"ratio": ratio, "jabberwocky_passed": jab["words_passed"], "protocol": jab["passed"],
            "mean_ok": jab["mean_ok"], "test_spearman": s["test_spearman"],
            "stratified": s["test_spearman_stratified"], "top50k": s["test_spearman_top50k"],
            "best_step": s["best_step"], "seconds": s["seconds"]}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [r["jabberwocky_passed"] for r in rows], "o-", color="tab:red", label="Jabberwocky words passed (of 40)")
    ax.set_xlabel("non-word share of each batch")
    ax.set_ylabel("protocol words passed", color="tab:red")
    ax.set_ylim(0, 41)
    ax2 = ax.twinx()
    for key, style, label in (("stratified", "s-", "Spearman, Zipf-stratified"), ("top50k", "^--", "Spearman, top-50k"),
                              ("test_spearman", "v:", "Spearman, all held-out words")):
        ax2.plot(x, [r[key] for r in rows], style, label=label)
    ax2.set_ylabel("test Spearman")
    ax2.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="nano-cnn")
    ap.add_argument("--ratios", default="0,0.1,0.2,0.35")
    ap.add_argument("--max-iters", type=int, default=None, help="shorter runs than the preset's default")
    ap.add_argument("--plot-only", action="store_true")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.plot_only:
        rows = json.loads((a.out / "curve.json").read_text())["rows"]
    else:
        rows = [train_one(a.preset, float(r), a.out, a.max_iters) for r in a.ratios.split(",")]
        (a.out / "curve.json").write_text(json.dumps({"preset": a.preset, "max_iters": a.max_iters, "rows": rows}, indent=1))
    steps = f"{a.max_iters} steps" if a.max_iters else "default steps"
    plot(rows, a.out / "curve.png", f"{a.preset} ({steps}): non-words vs protocol and rank quality")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
