"""Check a written site in headless Chromium from Python: a 127.0.0.1 static server and web/browser.mjs.

    with static_server("site/") as base:
        results = run_pages(base, [{"prompt": "def get_", "options": {"max_new_tokens": 32}}])

What tests/test_web.py and benchmarks/web_check.py run. Chromium is Debian's (`make test` installs it),
driven by puppeteer-core from web/node_modules.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from edgekit.errors import EdgekitError

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("EDGEKIT_CHROMIUM", "/usr/bin/chromium")


@contextlib.contextmanager
def static_server(folder: str | os.PathLike):
    """Python's http.server over ``folder`` on a free 127.0.0.1 port; yields the base URL, stops on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                             str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            if proc.poll() is not None:
                raise EdgekitError("the static file server exited")
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_pages(base: str, cases: list[dict], *, screenshot: str | os.PathLike | None = None,
              timeout_s: int = 900) -> list[dict]:
    """Each case's page result ({"token_ids", "text", "tokens_per_s"} or {"error"}), in order; ``screenshot``
    saves the last page as PNG."""
    if not shutil.which("node") or not os.path.exists(CHROMIUM):
        raise EdgekitError(f"needs node and {CHROMIUM} (`make test` installs Debian's chromium)")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([{"prompt": c["prompt"], "options": c["options"]} for c in cases], f)
    try:
        cmd = ["node", str(HERE / "browser.mjs"), "--base", base, "--cases", f.name]
        r = subprocess.run(cmd + (["--screenshot", str(screenshot)] if screenshot else []), capture_output=True,
                           text=True, timeout=timeout_s)
    finally:
        os.unlink(f.name)
    if r.returncode:
        raise EdgekitError(f"the page run failed: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout)
