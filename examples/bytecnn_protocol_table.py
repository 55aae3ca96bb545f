"""Rank quality three ways and the per-word Jabberwocky table of exported bytecnn files, side by side (markdown).

    .venv/bin/python examples/bytecnn_protocol_table.py runs/nano/nano.onnx runs/v2/v2.onnx > table.md

Everything goes through edgekit.runtime (the exported file, as a user would run it); --json for the raw figures.
"""
from __future__ import annotations

import argparse
import json

from edgekit.runtime import load
from edgekit.train import wordfreq_data as wd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="exported .onnx files")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    data = wd.load_words()
    split = wd.split_indices(data)
    results = []
    for path in a.models:
        scorer = load(path, threads=1)
        results.append({"model": path, "ranks": wd.rank_report(scorer.score, data, split),
                        "jabberwocky": wd.jabberwocky(scorer.score, data, split)})
    if a.json:
        print(json.dumps(results, indent=1))
        return
    print("| model | test Spearman, all | Zipf-stratified | top-50k | Jabberwocky words | protocol |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        k, j = r["ranks"], r["jabberwocky"]
        print(f"| {r['model']} | {k['all']:.3f} | {k['stratified']:.3f} | {k['top50k']:.3f} | "
              f"{j['words_passed']}/{j['words']} | {'PASS' if j['passed'] else 'FAIL'}{' (mean ok)' if j['mean_ok'] else ''} |")
    print()
    head = "| word | source | wordfreq Zipf |" + "".join(" score | pct of top-1000 | pass |" for _ in results)
    print(head)
    print("| --- | --- | ---: |" + " ---: | ---: | --- |" * len(results))
    for i, row in enumerate(results[0]["jabberwocky"]["rows"]):
        z = f"{row['wordfreq_zipf']:.2f}" if row["wordfreq_zipf"] else "absent"
        cells = "".join(f" {r['jabberwocky']['rows'][i]['score']:.3f} | {100 * r['jabberwocky']['rows'][i]['percentile_vs_top']:.1f}% | "
                        f"{'pass' if r['jabberwocky']['rows'][i]['pass'] else 'FAIL'} |" for r in results)
        print(f"| {row['word']} | {row['source']} | {z} |{cells}")
    print()
    for r in results:
        j = r["jabberwocky"]
        print(f"- {r['model']}: {j['words_passed']}/{j['words']} words pass; nonsense mean {j['nonsense_mean']:.3f} "
              f"{'>=' if j['mean_ok'] else '<'} rare-word mean {j['rare_mean']:.3f} - {j['margin']:.2f} = "
              f"{j['rare_mean'] - j['margin']:.3f}; top-1000 mean {j['top_mean']:.3f}; protocol {'PASS' if j['passed'] else 'FAIL'}.")


if __name__ == "__main__":
    main()
