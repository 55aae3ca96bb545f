"""Serve completions from one loaded model to several threads (a stand-in for a web server's workers).

    python examples/serve.py runs/demo/soma.onnx --workers 4 --requests 20
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import time

from edgekit.runtime import load

PROMPTS = ["import ", "def get_", "from ", "class ", "    return "]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    lm = load(args.model, threads=1)  # one session shared by every worker thread
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(lm.generate, PROMPTS[i % len(PROMPTS)], max_new_tokens=args.max_new_tokens)
                   for i in range(args.requests)]
        results = [f.result() for f in futures]
    wall = time.perf_counter() - t0
    tokens = sum(len(g.token_ids) for g in results)
    for p, g in zip(PROMPTS, results):
        print(f"{p!r:>14} -> {g.text[:60]!r}")
    print(f"{args.requests} requests, {tokens} tokens in {wall:.2f}s: {tokens / wall:,.0f} tokens/s "
          f"with {args.workers} workers")


if __name__ == "__main__":
    main()
