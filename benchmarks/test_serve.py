"""`edgekit serve` under concurrent streaming clients: aggregate tokens/s and time to first token at 1, 4, 8
and 16 clients, ratios to one client; llama-server on the same weights under the same load.

    pytest benchmarks/test_serve.py -m gate                   # the batching gate on the shipped soma (make test)
    EDGEKIT_SERVE_ONNX=/tmp/p3/phase3.onnx pytest benchmarks/test_serve.py -s -k table     # + a trained phase3
    EDGEKIT_BENCH_GPT=/work/ref/phase3/phase3.pt EDGEKIT_SERVE_ONNX=/tmp/p3/phase3.onnx \\
      EDGEKIT_LLAMA_SERVER=/work/llamacpp/build/bin/llama-server pytest benchmarks/test_serve.py -s -k llama

Each load (benchmarks/serve_load.py): N streaming clients, each sending ``REQUESTS`` greedy requests of
``MAX_TOKENS`` tokens one after another; aggregate tokens/s = all completion tokens / wall time. Loads of
different sizes (and the two servers) alternate round by round in one run, and ratios are medians of the
per-round ratios, because absolute rates on these shared 2-core machines are noise. Both servers run with
``THREADS`` onnxruntime / ggml threads; the client load runs on the same machine for both.
The llama-server comparison needs its binary (built from the vendored llama.cpp; llama-quantize beside it)
and ``gguf``; it converts the checkpoint as benchmarks/test_peers.py does (peers_gguf: f32 GGUF, then
llama.cpp's own q8_0 quantizer) and is never part of `make test`.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from serve_load import load  # noqa: E402
from serving import Server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOMA = ROOT / "examples" / "reference" / "soma-stdlib.onnx"
CLIENTS = (1, 4, 8, 16)
MAX_TOKENS, REQUESTS, THREADS = 48, 4, 1  # 48 new tokens, as the rest of the suite; fits phase3's 64-token block
PARALLEL = 8  # edgekit serve's default --parallel (chosen by the table: see README "Serve")


def _rounds(targets: dict, clients: tuple, rounds: int, *, requests: int = REQUESTS, max_tokens: int = MAX_TOKENS):
    """{(target, clients): [load result per round]}, every (target, clients) pair once per round, alternating."""
    out = {(t, c): [] for t in targets for c in clients}
    for url in targets.values():  # warm-up: sessions, connections, first prefills
        load(url, clients=2, requests=1, max_tokens=16)
    for _ in range(rounds):
        for c in clients:
            for name, url in targets.items():
                out[(name, c)].append(load(url, clients=c, requests=requests, max_tokens=max_tokens))
    return out


def _ratio(results: list, base: list) -> float:
    return statistics.median(r["tokens_per_s"] / b["tokens_per_s"] for r, b in zip(results, base))


def _table(name: str, res: dict, target: str, clients: tuple = CLIENTS) -> list[dict]:
    rows = []
    for c in clients:
        rs = res[(target, c)]
        rows.append({"model": name, "clients": c, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                     "vs_1_client": _ratio(rs, res[(target, 1)]),
                     "ttft_p50_ms": statistics.median(r["ttft_p50_ms"] for r in rs),
                     "ttft_p99_ms": statistics.median(r["ttft_p99_ms"] for r in rs)})
    return rows


def _print(rows: list[dict]) -> None:
    print(f"\n{'model':<14}{'clients':>8}{'tok/s':>10}{'x 1 client':>12}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}")
    for r in rows:
        print(f"{r['model']:<14}{r['clients']:>8}{r['tokens_per_s']:>10,.0f}{r['vs_1_client']:>12.2f}"
              f"{r['ttft_p50_ms']:>13.1f}{r['ttft_p99_ms']:>13.1f}")


@pytest.mark.gate
def test_gate_eight_clients_share_the_batch_on_soma(benchmark, gate):
    """Continuous batching pays: 8 concurrent streams get more aggregate tokens/s than one (soma, 1 thread)."""
    with Server(SOMA, "--parallel", PARALLEL, "--threads", THREADS) as s:
        res = _rounds({"edgekit": s.url}, (1, 8), rounds=3, max_tokens=64)
        assert s.metric("edgekit_busy_slots") == 0
    ratio = _ratio(res[("edgekit", 8)], res[("edgekit", 1)])
    benchmark.extra_info.update({"model": SOMA.name, "threads": THREADS, "parallel": PARALLEL, "ratio": ratio})
    benchmark.pedantic(lambda: None, rounds=1)
    gate("gpt.serve_8_clients_vs_1", ratio)


def test_table_tokens_per_s_and_ttft_at_1_4_8_16_clients(benchmark):
    """The README's table: the shipped soma, and a trained phase3 export when $EDGEKIT_SERVE_ONNX names one."""
    models = {"soma": SOMA}
    if os.environ.get("EDGEKIT_SERVE_ONNX"):
        models[Path(os.environ["EDGEKIT_SERVE_ONNX"]).stem] = Path(os.environ["EDGEKIT_SERVE_ONNX"])
    else:
        print("\nno $EDGEKIT_SERVE_ONNX: the table has the shipped soma only (export a trained phase3 and name it)")
    rows = []
    for name, path in models.items():
        with Server(path, "--parallel", PARALLEL, "--threads", THREADS) as s:
            rows += _table(name, _rounds({"edgekit": s.url}, CLIENTS, rounds=3), "edgekit")
    _print(rows)
    benchmark.extra_info["rows"] = rows
    benchmark.pedantic(lambda: None, rounds=1)
    assert all(r["tokens_per_s"] > 0 for r in rows)


class LlamaServer:
    """llama-server (the vendored llama.cpp's) on a GGUF file: --parallel slots, continuous batching."""

    def __init__(self, binary: str, gguf_path: Path, *, parallel: int, ctx: int, threads: int, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.log = gguf_path.with_suffix(".log")
        cmd = [binary, "-m", str(gguf_path), "--host", "127.0.0.1", "--port", str(port), "--parallel", str(parallel),
               "-c", str(ctx * parallel), "-t", str(threads), "-tb", str(threads), "--no-webui", "-cb"]
        with open(self.log, "w") as log:  # a file, not a pipe: an unread pipe fills and stalls the server
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        self.close()
        raise RuntimeError("llama-server did not become ready")

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_llama_server_parallel_8_same_weights_same_load(benchmark, tmp_path):
    """edgekit serve vs llama-server --parallel 8 on the same weights (q8_0 GGUF of $EDGEKIT_BENCH_GPT), 8 and
    1 streaming clients, alternating round by round."""
    binary = os.environ.get("EDGEKIT_LLAMA_SERVER") or shutil.which("llama-server")
    ckpt, onnx_path = os.environ.get("EDGEKIT_BENCH_GPT"), os.environ.get("EDGEKIT_SERVE_ONNX")
    if not (binary and Path(binary).is_file() and ckpt and onnx_path):
        pytest.skip("needs $EDGEKIT_LLAMA_SERVER (llama-server built from the vendored llama.cpp, llama-quantize "
                    "beside it), $EDGEKIT_BENCH_GPT (the checkpoint) and $EDGEKIT_SERVE_ONNX (its edgekit export)")
    pytest.importorskip("gguf", reason="pip install gguf (the peers extra)")
    from peers_gguf import write_f32

    from edgekit.runtime import load as load_model

    block = load_model(onnx_path).card.block_size
    f32, q8 = tmp_path / "w-f32.gguf", tmp_path / "w-q8_0.gguf"
    write_f32(ckpt, f32)
    subprocess.run([str(Path(binary).with_name("llama-quantize")), str(f32), str(q8), "q8_0", "1"], check=True,
                   capture_output=True)
    peer = LlamaServer(binary, q8, parallel=8, ctx=block, threads=THREADS, port=_free_port())
    try:
        with Server(onnx_path, "--parallel", PARALLEL, "--threads", THREADS) as s:
            res = _rounds({"edgekit": s.url, "llama-server": peer.url}, (1, 8), rounds=5)
    finally:
        peer.close()
    vs_peer = statistics.median(e["tokens_per_s"] / p["tokens_per_s"]
                                for e, p in zip(res[("edgekit", 8)], res[("llama-server", 8)]))
    rows = [{**r, "server": name} for name in ("edgekit", "llama-server")
            for r in _table(Path(onnx_path).stem, res, name, (1, 8))]
    for r in rows:
        print(f"{r['server']:<14}{r['clients']:>4} clients {r['tokens_per_s']:>9,.0f} tok/s  x{r['vs_1_client']:.2f} "
              f"of 1 client  TTFT p50 {r['ttft_p50_ms']:.1f} ms p99 {r['ttft_p99_ms']:.1f} ms")
    print(f"edgekit / llama-server at 8 clients (median of per-round ratios): {vs_peer:.2f}x")
    benchmark.extra_info.update({"rows": rows, "edgekit_vs_llama_server_8_clients": vs_peer})
    benchmark.pedantic(lambda: None, rounds=1)
    assert vs_peer > 0
