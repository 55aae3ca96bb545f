"""A bounded soak of `edgekit serve`: 500 requests from 8 clients (plain and streamed, greedy and sampled,
some cancelled mid-stream), no error, and the server's memory flat (RSS growth under 10% after warm-up)."""
from __future__ import annotations

import pathlib
import random
import threading

import httpx
import psutil
import pytest

from serving import Server

SOMA = pathlib.Path(__file__).resolve().parent.parent / "examples" / "reference" / "soma-stdlib.onnx"
CLIENTS, REQUESTS, WARMUP = 8, 500, 64
PROMPTS = ["def get_", "import ", "class Foo(", "    return ", "for i in range(", "x = ", "if __name__", "from os "]


def _one(c: httpx.Client, rng: random.Random) -> None:
    body = {"prompt": rng.choice(PROMPTS), "max_tokens": rng.randint(1, 48)}
    if rng.random() < 0.5:
        body.update(temperature=0.8, top_k=40, seed=rng.randint(0, 1000))
    if rng.random() < 0.2:
        body["logprobs"] = 2
    if rng.random() < 0.5:
        with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            if rng.random() < 0.2:  # leave early: the row must be cancelled, not leak
                next(lines)
                return
            assert [ln for ln in lines if ln][-1] == "data: [DONE]"
    else:
        r = c.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["finish_reason"] in ("length", "stop")


@pytest.mark.soak
def test_soak_500_requests_from_8_clients_no_error_and_flat_memory():
    with Server(SOMA, "--parallel", "8") as s:
        proc = psutil.Process(s.proc.pid)
        errors, lock, done = [], threading.Lock(), [0]
        rss = {}

        def client(k: int):
            rng = random.Random(k)
            with httpx.Client(base_url=s.url, timeout=60) as c:
                for _ in range(REQUESTS // CLIENTS + (k < REQUESTS % CLIENTS)):
                    try:
                        _one(c, rng)
                    except Exception as e:  # reported below
                        errors.append(repr(e))
                    with lock:
                        done[0] += 1
                        if done[0] == WARMUP:
                            rss["warm"] = proc.memory_info().rss

        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors[:5]
        assert done[0] == REQUESTS
        assert s.metric("edgekit_busy_slots") == 0 and s.metric("edgekit_queue_depth") == 0
        end = proc.memory_info().rss
        assert end < 1.10 * rss["warm"], f"RSS grew from {rss['warm'] / 2**20:.1f} MiB to {end / 2**20:.1f} MiB"
        assert s.stop() == 0
