"""llama.cpp's own binaries for the peer benchmarks: where they are, GGUF files of a checkpoint, parsed runs.

    bins = binaries()                                  # {"llama-bench": Path, ...} or pytest.skip with the build line
    files = gguf_files("runs/p3/phase3.pt", out_dir)   # {"f32": ..., "q8_0": ..., "q4_0": ...}
    bench(files["q8_0"], threads=1, n_prompt=200, n_gen=64)   # llama-bench: {"pp": tok/s, "tg": tok/s}
    completion(files["q8_0"], "def f", n=64, threads=1, temperature=0.8, top_k=40, seed=1)

The binaries are llama.cpp's as its users run them (llama-bench for decode and prefill, llama-completion
for sampling, llama-quantize for q8_0 / q4_0), built from the source vendored in llama-cpp-python's sdist,
never a Python binding's per-token calls (they slow the peer). Point ``$LLAMACPP_BIN`` at the folder that
holds them, or put them on PATH. Benchmark-side code: needs ``gguf`` (the ``peers`` extra) and torch.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BINARIES = ("llama-bench", "llama-completion", "llama-quantize")
BUILD = ("llama.cpp's binaries: $LLAMACPP_BIN or PATH must hold llama-bench, llama-completion and llama-quantize, "
         "built from llama-cpp-python's vendored source: pip download --no-deps --no-binary :all: "
         "llama-cpp-python==0.3.36; tar xzf it; cmake -S llama_cpp_python-0.3.36/vendor/llama.cpp -B build "
         "-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build build -j --target "
         "llama-bench llama-completion llama-quantize llama-server; pip install '.[peers]' (README: 'Against llama.cpp')")


def binaries(*names: str) -> dict[str, Path]:
    """The binaries' paths, or skip the calling test with how to build them."""
    names = names or BINARIES
    folder = os.environ.get("LLAMACPP_BIN")
    found = {}
    for n in names:
        p = Path(folder) / n if folder else (Path(shutil.which(n)) if shutil.which(n) else None)
        if p is None or not p.is_file():
            pytest.skip(BUILD)
        found[n] = p
    try:
        import gguf  # noqa: F401
    except ImportError:
        pytest.skip("the GGUF writer: pip install '.[peers]'")
    return found


def gguf_files(ckpt: str | os.PathLike, out: Path, types: tuple[str, ...] = ("q8_0", "q4_0")) -> dict[str, Path]:
    """The checkpoint as an f32 GGUF (benchmarks/peers_gguf.py) and llama-quantize's own ``types``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers_gguf import write_f32

    quantize = binaries("llama-quantize")["llama-quantize"]
    stem = Path(ckpt).stem
    files = {"f32": write_f32(ckpt, out / f"{stem}-f32.gguf")}
    for t in types:
        files[t] = out / f"{stem}-{t}.gguf"
        r = subprocess.run([str(quantize), str(files["f32"]), str(files[t]), t, "1"], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"llama-quantize {t} failed: {r.stderr[-500:]}")
    return files


def bench(model: Path, *, threads: int, n_prompt: int, n_gen: int, reps: int = 1) -> dict[str, float]:
    """llama-bench (after its own warm-up run): prefill of ``n_prompt`` and decode of ``n_gen`` tokens, tok/s."""
    exe = binaries("llama-bench")["llama-bench"]
    r = subprocess.run([str(exe), "-m", str(model), "-p", str(n_prompt), "-n", str(n_gen), "-t", str(threads),
                        "-r", str(reps), "-o", "json"], capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError(f"llama-bench failed: {r.stderr[-500:]}")
    rows = json.loads(r.stdout)
    out = {}
    for row in rows:
        out["pp" if row["n_prompt"] else "tg"] = float(row["avg_ts"])
    return out


_EVAL = re.compile(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs")
_PROMPT_ID = re.compile(r"^\S+ I\s+(\d+) -> '", re.M)


def completion(model: Path, prompt: str, *, n: int, threads: int, temperature: float = 0.0, top_k: int = 40,
               seed: int = 1, ctx: int = 512) -> dict:
    """llama-completion: ``n`` tokens after ``prompt`` (top-k, then temperature; top-p and min-p off, so
    its sampler chain is edgekit's), never stopping at end-of-text. Returns the generated text, the prompt
    ids it tokenized and its decode rate (eval time: tokens after the prompt, sampling included)."""
    exe = binaries("llama-completion")["llama-completion"]
    args = [str(exe), "-m", str(model), "-p", prompt, "-n", str(n), "-t", str(threads), "-c", str(ctx), "-no-cnv",
            "--no-display-prompt", "--verbose-prompt", "--ignore-eos", "--no-warmup", "--temp", str(temperature),
            "--top-k", str(1 if temperature == 0 else top_k), "--top-p", "1.0", "--min-p", "0.0", "-s", str(seed),
            "--repeat-penalty", "1.0"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError(f"llama-completion failed: {r.stderr[-500:]}")
    m = _EVAL.search(r.stderr)
    n_prompt = int(re.search(r"number of tokens in prompt = (\d+)", r.stderr).group(1))
    ms, runs = float(m.group(1)), int(m.group(2))
    return {"text": r.stdout.rstrip("\n"), "prompt_ids": [int(x) for x in _PROMPT_ID.findall(r.stderr)][:n_prompt],
            "tokens_per_s": runs / (ms / 1e3) if ms else 0.0}
