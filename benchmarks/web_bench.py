"""The browser runtime's figures: wasm decode against native Python on the same file, agreement, site size.

    python benchmarks/web_bench.py examples/reference/soma-stdlib.pt [--schemes fp32,int8-weights,...] [--json]

prints the issue-23 table (scheme, bytes, wasm tok/s, native tok/s, wasm/native, agreement, site gzip bytes),
exporting the checkpoint with `edgekit export --target web --quant SCHEME` for each scheme. benchmarks/test_web.py
holds the default scheme to budgets with the same functions. Speeds: process CPU time per decoded token (a
48-token greedy generation minus a 1-token one), onnxruntime-web's wasm in Node (web/timing.py, V8's optimizing
tier) and the Python runtime (1 thread) in alternating rounds; the ratio is the median of per-round ratios.
Agreement: greedy tokens of 20 prompts, wasm against the Python runtime on the same file.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgekit.runtime import load
from edgekit.runtime.gpt import SamplingOptions
from edgekit.web.site import write_site
from edgekit.web.timing import WasmTimer

TOKENS = 48
ROUNDS = 7
PROMPTS = ["def get_value(self, key):\n", "import os\nimport sys\n", "class Foo(object):\n", "    return ",
           "for i in range(", "if __name__ == ", "self.", "# Copyright ", "from collections import ", "try:\n    ",
           "raise ValueError(", "with open(", "x = [", "def __init__(self, ", "print(", "\"\"\"Return the ",
           "while True:\n", "lambda x: ", "async def run(", "except Exception as e:\n"]
SCHEMES = ("fp32", "int8-weights", "int8-dynamic", "int8-nbits", "int4")


def native_seconds_per_token(lm, ids: list[int], tokens: int = TOKENS) -> float:
    """The Python runtime's CPU seconds per decoded token, measured as the Node side measures."""
    t = time.process_time()
    g = lm.run([ids], SamplingOptions(max_new_tokens=tokens, heal=False))[0]
    full = time.process_time() - t
    t = time.process_time()
    lm.run([ids], SamplingOptions(max_new_tokens=1, heal=False))
    return max(full - (time.process_time() - t), 1e-9) / max(len(g.token_ids) - 1, 1)


def measure(path: str | Path, *, rounds: int = ROUNDS, timer: WasmTimer | None = None) -> dict:
    """wasm and native tokens/s on ``path`` (alternating rounds, one thread each) and greedy agreement."""
    lm = load(path, threads=1)
    ids = lm.tokenizer.encode(PROMPTS[0])[:8]
    own = timer is None
    timer = timer or WasmTimer()
    try:
        lm.run([ids], SamplingOptions(max_new_tokens=TOKENS, heal=False))  # warm-up (the timer warms its own)
        ratios, wasm, native = [], [], []
        for _ in range(rounds):
            w = timer.seconds_per_token(str(path), prompt_ids=ids, tokens=TOKENS)
            n = native_seconds_per_token(lm, ids)
            wasm.append(w)
            native.append(n)
            ratios.append(n / w)
        same = 0
        for p in PROMPTS:
            pids = lm.tokenizer.encode(p)
            ref = lm.run([pids], SamplingOptions(max_new_tokens=32, heal=False))[0].token_ids
            same += timer.run(str(path), prompt_ids=pids, tokens=32)["token_ids"] == ref
    finally:
        if own:
            timer.close()
    return {"scheme": lm.card.quantization.scheme, "bytes": Path(path).stat().st_size,
            "wasm_tokens_per_s": 1 / statistics.median(wasm), "native_tokens_per_s": 1 / statistics.median(native),
            "wasm_vs_native": statistics.median(ratios), "agreement": same / len(PROMPTS), "prompts": len(PROMPTS)}


def site_gzip_bytes(path: str | Path) -> int:
    """Model plus runtime, gzipped: what `edgekit web` writes for ``path``."""
    with tempfile.TemporaryDirectory() as d:
        return write_site(path, out=Path(d) / "site")["gzip_bytes"]


def export(ckpt: str, scheme: str, out: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "edgekit.cli", "export", ckpt, "--target", "web", "--quant", scheme,
                        "-o", str(out), "--threads", "1", "--quiet"], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"export {scheme} failed: {r.stderr.strip()[-300:]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d, WasmTimer() as timer:
        for scheme in args.schemes.split(","):
            print(f"[web_bench] {scheme}: export --target web", file=sys.stderr)
            try:
                path = export(args.checkpoint, scheme, Path(d) / f"{scheme}.onnx")
            except RuntimeError as e:
                rows.append({"scheme": scheme, "error": str(e)})
                continue
            rows.append({**measure(path, timer=timer), "site_gzip_bytes": site_gzip_bytes(path)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| scheme | bytes | wasm tok/s | native tok/s | wasm / native | agreement | site gzip bytes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "error" in r:
            print(f"| {r['scheme']} | | | | | | {r['error'][:80]} |")
            continue
        print(f"| {r['scheme']} | {r['bytes']:,} | {r['wasm_tokens_per_s']:,.0f} | {r['native_tokens_per_s']:,.0f} | "
              f"{r['wasm_vs_native']:.2f}x | {round(r['agreement'] * r['prompts'])}/{r['prompts']} | "
              f"{r['site_gzip_bytes']:,} |")


if __name__ == "__main__":
    main()
