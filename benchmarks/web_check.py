"""Issue 23's check on any web file: `edgekit web` it, load the page from a 127.0.0.1 server in headless
Chromium, and compare with the Python runtime on the same file: greedy tokens of 20 prompts and seeded
sampled tokens (8 option sets); optionally a screenshot of the page.

    python benchmarks/web_check.py soma-web.onnx [--screenshot docs/web-page.png] [--shot-prompt "def "]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from edgekit.runtime import load
from edgekit.web.browser import run_pages, static_server
from edgekit.web.site import write_site

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_web import GREEDY, SAMPLED  # noqa: E402 (the tests' prompts and option sets)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--screenshot", default=None)
    ap.add_argument("--shot-prompt", default="def get_value(self, key):\n")
    args = ap.parse_args()
    lm = load(args.model, threads=1)
    cases = [(p, {"max_new_tokens": 32}) for p in GREEDY] + [(p, {"max_new_tokens": 32, **o}) for p, o in SAMPLED]
    expected = [lm.generate(p, **o) for p, o in cases]
    pages = [{"prompt": p, "options": o} for p, o in cases]
    if args.screenshot:
        pages.append({"prompt": args.shot_prompt, "options": {"max_new_tokens": 48}})
    with tempfile.TemporaryDirectory() as d:
        site = write_site(args.model, out=Path(d) / "site")
        with static_server(site["site"]) as base:
            got = run_pages(base, pages, screenshot=args.screenshot)
    same = [g.get("token_ids") == e.token_ids and g.get("text") == e.text for g, e in zip(got, expected)]
    n = len(GREEDY)
    print(json.dumps({"model": args.model, "scheme": lm.card.quantization.scheme,
                      "greedy_same": f"{sum(same[:n])}/{n}", "sampled_same": f"{sum(same[n:])}/{len(SAMPLED)}",
                      "page_tokens_per_s": sorted(g.get("tokens_per_s", 0) for g in got)[len(got) // 2],
                      "site_gzip_bytes": site["gzip_bytes"]}))


if __name__ == "__main__":
    main()
