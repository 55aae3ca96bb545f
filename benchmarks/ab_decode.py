"""Two GPT exports side by side: file bytes, bytes per parameter and decode speed, interleaved in one run.

    python benchmarks/ab_decode.py before.onnx after.onnx [--ckpt runs/p3/phase3.pt] [--rounds 15]

Both files get the same 8-token prompt and make 48 new tokens at 1 thread, greedy and sampled (T 0.8,
top-k 40, seed 1), alternating file by file every round; the ratio is the median of per-round ratios
(after / before), which cancels the load drift of a shared machine. The README's before/after figures of
issue 14 (per-row LM head scales, repetition-penalty cost) come from this script. With ``--ckpt`` it
also prints bytes per parameter (tied embedding counted once, as ``nn.Module`` counts it).
"""
from __future__ import annotations

import argparse
import os
import statistics

from edgekit.runtime import load

PROMPT = "def get_value(self, key):\n    return"
MODES = {"greedy": {}, "sampled": {"temperature": 0.8, "top_k": 40, "seed": 1}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--ckpt", help="the checkpoint both came from, for bytes per parameter")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    lms = {k: load(getattr(args, k), threads=1) for k in ("before", "after")}
    prompt = lms["before"].tokenizer.decode(lms["before"].tokenizer.encode(PROMPT)[:8])
    params = None
    if args.ckpt:
        from edgekit.export.gpt import prepare_model
        from edgekit.train.checkpoint import load_checkpoint

        params = sum(p.numel() for p in prepare_model(load_checkpoint(args.ckpt))[0].parameters())
    for k, lm in lms.items():
        size = os.path.getsize(getattr(args, k))
        per = f", {size / params:.3f} bytes/param" if params else ""
        print(f"{k}: {getattr(args, k)} ({lm.card.quantization.scheme}, {size:,} bytes{per})")
    for mode, kw in MODES.items():
        run = {k: (lambda lm=lm: lm.generate(prompt, max_new_tokens=48, heal=False, **kw)) for k, lm in lms.items()}
        for f in run.values():
            f()
        rates = {k: [] for k in run}
        ratios = []
        for _ in range(args.rounds):
            got = {k: f() for k, f in run.items()}
            for k, g in got.items():
                rates[k].append(g.tokens_per_s)
            ratios.append(got["after"].tokens_per_s / got["before"].tokens_per_s)
        same = got["before"].token_ids == got["after"].token_ids
        print(f"{mode}: before {statistics.median(rates['before']):,.0f} tok/s, after "
              f"{statistics.median(rates['after']):,.0f} tok/s, after/before {statistics.median(ratios):.3f} "
              f"(per-round range {min(ratios):.3f}-{max(ratios):.3f}); same tokens: {same}")


if __name__ == "__main__":
    main()
