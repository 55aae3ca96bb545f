"""Table and chart of a benchmark run: every budget, what was measured, and the headroom.

    python benchmarks/report.py benchmarks/out/bench.json --png benchmarks/out/bench.png
"""
from __future__ import annotations

import argparse
import json
import sys


def rows(bench_json: dict) -> list[dict]:
    out = []
    for b in bench_json["benchmarks"]:
        for name, r in (b.get("extra_info", {}).get("budgets") or {}).items():
            out.append({"budget": name, "test": b["name"], "group": b.get("group") or name.split(".")[0], **r})
    return sorted(out, key=lambda r: r["budget"])


def headroom(r: dict) -> float:
    """> 1 means inside the budget: measured/min for floors, max/measured for ceilings."""
    if "min" in r:
        return r["measured"] / r["min"] if r["min"] else float("inf")
    return r["max"] / r["measured"] if r["measured"] else float("inf")


def table(rs: list[dict], *, markdown: bool = False) -> str:
    """Every budget: measured, bound, headroom (> 1 is inside), status and source; plain or Markdown."""
    if markdown:
        lines = ["| budget | measured | bound | headroom | status | source |", "| --- | ---: | --- | ---: | --- | --- |"]
    else:
        lines = [f"{'budget':<38}{'measured':>14}  {'budget':<14}{'headroom':>9}  {'status':<8}source"]
    for r in rs:
        bound = f">= {r['min']:g}" if "min" in r else f"<= {r['max']:g}"
        status = "ok" if r["ok"] else "BROKEN"
        if markdown:
            lines.append(f"| {r['budget']} | {r['measured']:,.4g} {r.get('unit', '')} | {bound} | {headroom(r):.2f}x "
                         f"| {status} | {r['source']} |")
        else:
            lines.append(f"{r['budget']:<38}{r['measured']:>14,.4g}  {bound:<14}{headroom(r):>8.2f}x  {status:<8}"
                         f"{r['source']}")
    return "\n".join(lines)


def chart(rs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["budget"] for r in rs]
    vals = [min(headroom(r), 50.0) for r in rs]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rs) + 1.6), dpi=110)
    colors = ["tab:green" if r["ok"] else "tab:red" for r in rs]
    ax.barh(names, vals, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("headroom (measured vs budget; > 1 is inside the budget, log scale)")
    for i, r in enumerate(rs):
        unit = r.get("unit", "")
        ax.text(vals[i], i, f"  {r['measured']:,.3g} {unit}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_title("edgekit benchmark budgets")
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json_path")
    ap.add_argument("--png")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args()
    rs = rows(json.load(open(args.json_path)))
    print(table(rs, markdown=args.markdown))
    if args.png:
        chart(rs, args.png)
        print(f"chart: {args.png}")
    return 0 if all(r["ok"] for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
