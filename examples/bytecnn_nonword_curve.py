"""The non-word ratio curve: Jabberwocky passes and rank quality against the share of non-words per batch.

    .venv/bin/python examples/bytecnn_nonword_curve.py --out runs/curve                     # trains, then draws
    .venv/bin/python examples/bytecnn_nonword_curve.py --out runs/curve --ratios 0,0.1,0.2 --max-iters 3000 \
        --series stratify=0.5,1 --set nonword_edit_top=5000                               # one curve per stratify
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


def train_one(preset: str, ratio: float, out: Path, max_iters: int | None, extra: list[str]) -> dict:
    run = out / "-".join([preset, f"nonwords={ratio:g}", *extra])
    if not (run / "train_log.json").is_file():
        cmd = [sys.executable, "-m", "edgekit.cli", "train", preset, "--out", str(run), "--set", "threads=1",
               "--set", f"nonwords={ratio:g}", "--quiet"]
        for kv in extra:
            cmd += ["--set", kv]
        if max_iters:
            cmd += ["--max-iters", str(max_iters)]
        subprocess.run(["nice", *cmd], check=True)
    s = json.loads((run / "train_log.json").read_text())["summary"]
    ranks, jab = _score(run / f"{preset}.pt")  # scored again here, so every run is measured by today's code
    return {"ratio": ratio, "series": " ".join(extra), "jabberwocky_passed": jab["words_passed"], "protocol": jab["passed"],
            "mean_ok": jab["mean_ok"], "test_spearman": ranks["all"], "stratified": ranks["stratified"],
            "top50k": ranks["top50k"], "best_step": s["best_step"], "seconds": s["seconds"]}


def _score(ckpt: Path) -> tuple[dict, dict]:
    """Spearman three ways and the protocol for a checkpoint, in PyTorch (the same numbers training logs)."""
    import torch

    from edgekit.models.bytecnn import encode_words
    from edgekit.train import wordfreq_data as wd
    from edgekit.train.checkpoint import load_checkpoint

    c = load_checkpoint(ckpt)
    model = c.build_model().eval()
    data = wd.load_words(limit=c.config.get("tokens"))
    split = wd.split_indices(data)

    def score(words):
        with torch.no_grad():
            return model(torch.from_numpy(encode_words(words, max_len=c.model_args["max_len"]))).numpy()

    return wd.rank_report(score, data, split), wd.jabberwocky(score, data, split)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for n, series in enumerate(dict.fromkeys(r["series"] for r in rows)):
        rs = [r for r in rows if r["series"] == series]
        x, color, name = [r["ratio"] for r in rs], f"C{n}", series or "preset defaults"
        ax.plot(x, [r["jabberwocky_passed"] for r in rs], "o-", color=color, label=name)
        for key, style, label in (("stratified", "s-", "Zipf-stratified"), ("top50k", "^--", "top-50k"),
                                  ("test_spearman", "v:", "all words")):
            ax2.plot(x, [r[key] for r in rs], style, color=color, label=f"{label}, {name}")
    ax.axhline(40, color="grey", lw=0.8)
    ax.set(xlabel="non-word share of each batch", ylabel="Jabberwocky words passed (of 40)", ylim=(0, 41))
    ax2.set(xlabel="non-word share of each batch", ylabel="test Spearman", ylim=(0, 0.8))
    ax.legend(fontsize=8)
    ax2.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="nano-cnn")
    ap.add_argument("--ratios", default="0,0.1,0.2,0.35")
    ap.add_argument("--max-iters", type=int, default=None, help="shorter runs than the preset's default")
    ap.add_argument("--series", default=None, help="KEY=V1,V2: one curve per value of a training option")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="KEY=VALUE for every run")
    ap.add_argument("--plot-only", action="store_true")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.plot_only:
        rows = json.loads((a.out / "curve.json").read_text())["rows"]
    else:
        key, _, values = (a.series or "=").partition("=")
        series = [[f"{key}={v}"] for v in values.split(",")] if a.series else [[]]
        rows = [train_one(a.preset, float(r), a.out, a.max_iters, s + a.extra)
                for s in series for r in a.ratios.split(",")]
        (a.out / "curve.json").write_text(json.dumps({"preset": a.preset, "max_iters": a.max_iters, "rows": rows}, indent=1))
    steps = f"{a.max_iters} steps" if a.max_iters else "default steps"
    plot(rows, a.out / "curve.png", f"{a.preset} ({steps}): non-words vs protocol and rank quality")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
