"""Decode timing in onnxruntime-web's wasm backend, from Python: one Node process answers many requests.

    with WasmTimer() as t:
        s = t.seconds_per_token("soma-web.onnx", prompt_ids=[1, 2, 3], tokens=48)   # CPU s per decoded token

What `edgekit export --target web` times its candidates with and benchmarks/test_web.py compares against
the Python runtime. The Node side is web/bench.mjs --serve under ``node --no-liftoff`` (V8 compiles the
wasm with its optimizing tier once: the steady state a page reaches after tier-up). A round is a greedy
generation of ``tokens`` minus one of a single token, in the Node process's CPU time.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from edgekit.errors import EdgekitError

HERE = Path(__file__).resolve().parent


def node_runner() -> tuple[str, Path]:
    """(node executable, web/bench.mjs), or an EdgekitError saying what to install."""
    node = shutil.which("node")
    if node is None:
        raise EdgekitError("timing in onnxruntime-web needs Node.js 20 or later, and `node` is not on PATH")
    if not (HERE / "node_modules" / "onnxruntime-web").is_dir():
        raise EdgekitError(f"timing in onnxruntime-web needs its npm packages: run `npm ci` in {HERE} "
                           "(`make install` does)")
    return node, HERE / "bench.mjs"


class WasmTimer:
    """A Node process timing edgekit files in onnxruntime-web (``provider="cpu"``: onnxruntime-node)."""

    def __init__(self, provider: str = "wasm"):
        node, script = node_runner()
        self._proc = subprocess.Popen([node, "--no-liftoff", str(script), "--serve", "--provider", provider],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, cwd=HERE)

    def run(self, path: str, *, prompt_ids: list[int], tokens: int) -> dict:
        """One round on ``path`` (loaded and warmed up on first use): {"s_per_token", "token_ids"}."""
        req = {"file": str(path), "tokens": int(tokens), "prompt_ids": [int(i) for i in prompt_ids]}
        try:
            self._proc.stdin.write(json.dumps(req) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            err = self._proc.stderr.read().strip().splitlines() if self._proc.poll() is not None else []
            raise EdgekitError(f"the onnxruntime-web timer stopped: {(err or ['no answer'])[-1]}")
        answer = json.loads(line)
        if "error" in answer:
            raise EdgekitError(f"timing {path} in onnxruntime-web failed: {answer['error']}")
        return answer

    def seconds_per_token(self, path: str, *, prompt_ids: list[int], tokens: int) -> float:
        return self.run(path, prompt_ids=prompt_ids, tokens=tokens)["s_per_token"]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> "WasmTimer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
