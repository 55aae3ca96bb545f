"""Concurrent streaming clients against an OpenAI-style ``/v1/completions`` (edgekit serve or llama-server).

    r = load("http://127.0.0.1:8080", clients=8, requests=2, max_tokens=128)
    r["tokens_per_s"], r["ttft_p50_ms"], r["ttft_p99_ms"]

Each client streams its requests one after another (greedy, its own prompt), so ``clients`` requests are in
flight at any time. Aggregate tokens/s = completion tokens of every request / wall time of the whole load;
time to first token = from sending a request to its first chunk with text. Tokens are counted from the
stream: the final ``usage`` when the server sends one, else one per chunk (llama-server streams one token
per chunk). One asyncio loop and httpx drive every client, so the load costs both servers the same.
"""
from __future__ import annotations

import asyncio
import json
import statistics
import time

import httpx

PROMPTS = ["def get_value(self, key):\n", "import os\nimport sys\n\n", "class Config(object):\n    def __init__",
           "for i in range(len(items)):\n", "    return self._", "if __name__ == '__main__':\n",
           "from collections import", "    def __repr__(self):\n"]


async def _stream(http: httpx.AsyncClient, body: dict) -> tuple[float | None, int]:
    """(seconds to the first text chunk, completion tokens) of one streamed request. A kept-alive connection
    that the server closed before answering (llama-server's HTTP library ends a connection after a number of
    requests) is retried once on a new one, the time spent counted."""
    t0 = time.perf_counter()
    try:
        return await _stream_once(http, body, t0)
    except httpx.RemoteProtocolError:
        return await _stream_once(http, body, t0)


async def _stream_once(http: httpx.AsyncClient, body: dict, t0: float) -> tuple[float | None, int]:
    ttft, chunks, usage = None, 0, None
    async with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            if d.get("usage"):
                usage = d["usage"]["completion_tokens"]
            if d.get("choices") and d["choices"][0].get("text"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
    return ttft, usage if usage is not None else chunks


async def _load(url: str, clients: int, requests: int, body: dict) -> dict:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        async def client(k: int):
            out = []
            for j in range(requests):
                prompt = PROMPTS[(k + j) % len(PROMPTS)]
                out.append(await _stream(http, {**body, "prompt": prompt}))
            return out

        t0 = time.perf_counter()
        results = await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    flat = [r for rs in results for r in rs]
    ttfts = sorted(t for t, _ in flat if t is not None)
    tokens = sum(n for _, n in flat)
    return {"clients": clients, "requests": len(flat), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_p50_ms": statistics.median(ttfts) * 1e3 if ttfts else float("nan"),
            "ttft_p99_ms": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))] * 1e3 if ttfts else float("nan")}


def load(url: str, *, clients: int, requests: int = 2, max_tokens: int = 128, extra: dict | None = None) -> dict:
    """Run ``clients`` concurrent streaming clients of ``requests`` greedy requests each; see the module doc."""
    body = {"max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            **(extra or {})}
    try:
        return asyncio.run(_load(url, clients, requests, body))
    except httpx.HTTPError as e:
        raise RuntimeError(f"{url}: {type(e).__name__}: {e}") from e
