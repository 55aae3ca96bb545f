"""The real `edgekit serve` as a subprocess on a free 127.0.0.1 port, for tests and benchmarks.

    with Server("soma.onnx", "--parallel", "4") as s:
        s.openai().completions.create(model="m", prompt="def ", max_tokens=8)
        s.http.get("/health")
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx

READY_S = 90


class Server:
    """``python -m edgekit.cli serve MODEL --port 0 ARGS``; the port is read from its 'listening on' line."""

    def __init__(self, model, *args, env: dict | None = None, wait: bool = True):
        cmd = [sys.executable, "-m", "edgekit.cli", "serve", str(model), "--port", "0", *map(str, args)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.url = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + READY_S
        while self.url is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("edgekit serve did not start:\n" + "".join(self.lines))
            time.sleep(0.02)
        self.http = httpx.Client(base_url=self.url, timeout=60)
        if wait:
            self.wait_ready(deadline)

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"listening on (http://[\d.]+:\d+)", line)
            if m:
                self.url = m.group(1)

    def wait_ready(self, deadline: float) -> None:
        while True:
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("edgekit serve never became ready:\n" + "".join(self.lines))
            time.sleep(0.05)

    def openai(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)

    def metric(self, name: str, headers: dict | None = None) -> float:
        """One unlabelled sample of /metrics (a gauge or a counter)."""
        text = self.http.get("/metrics", headers=headers).text
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert m, f"{name} not in /metrics:\n{text[:2000]}"
        return float(m.group(1))

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
