"""Hostile files (issue 24): inputs an attacker would hand edgekit, each built here, none shipped.

Every case builds its files in its own tmp_path, runs the real CLI in a fresh process (``python -m edgekit``)
and holds it to the README's promises for files from strangers:

- a non-zero exit and exactly one stderr line starting ``edgekit: error:``, no ``Traceback``, no raw
  control byte (an escape sequence from a file cannot reach the terminal);
- every file that was in tmp_path before is byte-identical after (nothing overwritten), and nothing outside it
  was read (the "paths from files" cases check what the output records);
- peak memory (the child's ru_maxrss from wait4) under 1 GiB and wall time under 30 s.

The classes are the issue's: 1 outputs, 2 paths from files, 3 tokenizers, 4 sizes, 5 one clean line
(7, torchrun, is tests/test_distributed_stop.py; 6, reproducible exports, tests/test_reproducible.py).
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import run_cli

GiB = 1 << 30
MEMORY = 1 * GiB  # the bound on peak memory
SECONDS = 30.0  # the bound on wall time
KILL_RSS = 2 * GiB  # a watchdog kills the child beyond this (the case fails; the machine is spared)
ROOT = Path(__file__).resolve().parents[1]


# ----- running the CLI --------------------------------------------------------------------------------
class Outcome:
    def __init__(self, code, stdout, stderr, peak, seconds, killed):
        self.code, self.stdout, self.stderr, self.peak, self.seconds, self.killed = code, stdout, stderr, peak, seconds, killed

    def __repr__(self):
        return (f"exit {self.code}, peak {self.peak / 2**20:.0f} MiB, {self.seconds:.1f}s, killed={self.killed}\n"
                f"stderr:\n{self.stderr[-3000:]!r}\nstdout:\n{self.stdout[-1000:]!r}")


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# A small launcher between pytest and the command: a process forked from pytest starts with pytest's RSS as
# its high-water mark (Linux copies it at fork and keeps it across exec), so wait4 on it would report pytest's
# size; the launcher, small after its exec, forks the command and reports the command's own ru_maxrss.
LAUNCHER = """import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
with open(sys.argv[1] + ".pid", "w") as f:
    f.write(str(pid))
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump([os.waitstatus_to_exitcode(status), usage.ru_maxrss], f)
"""


def edgekit(argv, *, cwd, env=None, stdin=None, timeout=45.0, module="edgekit") -> Outcome:
    """``python -m edgekit argv`` in ``cwd``; peak memory from wait4's rusage (through LAUNCHER), a
    watchdog for runaways."""
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"hostile-{os.getpid()}-{threading.get_ident()}"
    logs.mkdir(exist_ok=True)
    out, err, report = logs / "stdout", logs / "stderr", logs / "report.json"
    for f in (report, logs / "report.json.pid"):
        f.unlink(missing_ok=True)
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), **(env or {})}
    full_env.pop("EDGEKIT_DEBUG", None)
    with open(out, "wb") as fo, open(err, "wb") as fe:
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(report), sys.executable, "-m", module,
                              *map(str, argv)], cwd=cwd, env=full_env, stdout=fo, stderr=fe,
                             stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE, start_new_session=True)
        if stdin is not None:
            p.stdin.write(stdin)
            p.stdin.close()
        killed = []

        def watch():
            pid_file = logs / "report.json.pid"
            while p.returncode is None:
                child = int(pid_file.read_text() or 0) if pid_file.exists() else 0
                if (child and _rss(child) > KILL_RSS) or time.monotonic() - t0 > timeout:
                    killed.append(True)
                    with contextlib.suppress(OSError):
                        os.killpg(p.pid, signal.SIGKILL)
                    return
                time.sleep(0.02)

        threading.Thread(target=watch, daemon=True).start()
        p.wait()
        seconds = time.monotonic() - t0
    code, maxrss = json.loads(report.read_text()) if report.exists() else (p.returncode, 0)
    return Outcome(code, out.read_text(errors="replace"), err.read_text(errors="replace"),
                   maxrss * 1024, seconds, bool(killed))


def snapshot(folder: Path) -> dict:
    """Path -> sha256 (regular files) or the kind of entry (links, fifos, folders)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "link:" + os.readlink(p)
        elif p.is_fifo():
            out[str(p)] = "fifo"
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p)] = "dir"
    return out


def assert_refused(r: Outcome, before: dict, after: dict, expect: str | None = None):
    assert not r.killed, f"killed by the watchdog (over {KILL_RSS >> 20} MiB or the time limit): {r}"
    assert r.code not in (0, None), f"accepted: {r}"
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("edgekit: error:")]
    assert len(errors) == 1 and len(lines) == 1, f"not one clean error line: {r}"
    assert "Traceback" not in r.stderr and "unexpected" not in errors[0], r
    assert not any(ord(c) < 32 and c not in "\n" or 0x7f <= ord(c) <= 0x9f for c in r.stderr + r.stdout), \
        f"raw control characters reached the terminal: {r}"
    if expect is not None:
        assert expect.lower() in errors[0].lower(), r
    changed = {k for k in before if before[k] != after.get(k)}
    assert not changed, f"inputs changed: {sorted(changed)}; {r}"
    assert r.peak < MEMORY, f"peak memory {r.peak / 2**20:.0f} MiB: {r}"
    assert r.seconds < SECONDS, f"took {r.seconds:.1f}s: {r}"


# ----- shared files: a tiny GPT (byte-level BPE) checkpoint and its export, made once ---------------------------
def _bpe_spec():
    from edgekit.runtime.tokenizer import bpe_spec

    ranks = {bytes([i]): i for i in range(256)}
    for m in (b"de", b"f ", b"in", b"re", b"se", b"lf"):
        ranks[m] = len(ranks)
    return bpe_spec(ranks, name="tiny")


def _save_gpt(path: Path, **over):
    """A random-init 1-layer GPT checkpoint in edgekit's format; ``over`` replaces top-level keys."""
    from edgekit.models.gpt import build
    from edgekit.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = {"block_size": 16, "vocab_size": 263, "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0, "bias": True}
    model = build(cfg)
    state = dict(model=model, model_args=cfg, family="gpt", tokenizer=_bpe_spec(), iter_num=1, best_val_loss=5.0,
                 config={"seed": 0})
    state.update(over)
    save_checkpoint(path, **state)
    return path


def _save_bytecnn(path: Path):
    from edgekit.models.bytecnn import build
    from edgekit.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = {"max_len": 8, "emb_dim": 4, "channels": [4], "kernels": [3], "strides": [1], "hidden": 0}
    save_checkpoint(path, model=build(cfg), model_args=cfg, family="bytecnn", tokenizer=None, iter_num=1,
                    best_val_loss=1.0, config={"preset": "tiny"})
    return path


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile-kit")
    ckpt = _save_gpt(d / "tiny.pt")
    r = run_cli("export", ckpt, "-o", d / "tiny.onnx", "--quant", "fp32", "--quiet", "--threads", "1")
    assert r.exit_code == 0, r.output
    model = onnx.load(str(d / "tiny.onnx"))
    meta = json.loads({p.key: p.value for p in model.metadata_props}["edgekit"])
    return {"dir": d, "ckpt": ckpt.read_bytes(), "onnx": (d / "tiny.onnx").read_bytes(), "model": model, "meta": meta,
            "state": torch.load(ckpt, weights_only=True)}


def with_meta(kit, path: Path, meta, *, raw: str | None = None) -> Path:
    """The tiny export with its ``edgekit`` metadata replaced (``raw``: the value as given, not JSON-encoded)."""
    m = onnx.ModelProto()
    m.CopyFrom(kit["model"])
    del m.metadata_props[:]
    helper.set_model_props(m, {"edgekit": raw if raw is not None else json.dumps(meta)})
    path.write_bytes(m.SerializeToString())
    return path


def meta_with(kit, **changes) -> dict:
    """A copy of the tiny export's metadata with top-level keys replaced (dotted keys reach inside objects)."""
    meta = json.loads(json.dumps(kit["meta"]))
    for key, value in changes.items():
        node, *path = key.split("__")
        target = meta
        for p in [node, *path][:-1]:
            target = target[p]
        target[[node, *path][-1]] = value
    return meta


# ----- the cases: (id, class, builder(tmp, kit) -> argv or (argv, options), expected text in the error) ----------------
CASES = []


def case(cid: str, cls: int, expect: str | None = None):
    def register(fn):
        CASES.append(pytest.param(fn, expect, id=f"c{cls}-{cid}"))
        return fn
    return register


def _copy_ckpt(t, kit, name="tiny.pt"):
    p = t / name
    p.write_bytes(kit["ckpt"])
    return p


# class 1: -o never replaces an input, a special file or a folder
@case("o-is-data-file", 1, "reads it")
def _(t, kit):
    ck = _copy_ckpt(t, kit)
    (t / "notes.txt").write_text("def f(x):\n    return x\n" * 400)
    return ["export", ck, "--data", t / "notes.txt", "-o", t / "notes.txt", "--quant", "fp32"]


@case("o-symlink-to-data", 1, "reads it")
def _(t, kit):
    ck = _copy_ckpt(t, kit)
    (t / "notes.txt").write_text("def f(x):\n    return x\n" * 400)
    (t / "out.onnx").symlink_to(t / "notes.txt")
    return ["export", ck, "--data", t / "notes.txt", "-o", t / "out.onnx", "--quant", "fp32"]


@case("o-hardlink-to-data", 1, "reads it")
def _(t, kit):
    ck = _copy_ckpt(t, kit)
    (t / "notes.txt").write_text("def f(x):\n    return x\n" * 400)
    os.link(t / "notes.txt", t / "out.onnx")
    return ["export", ck, "--data", t / "notes.txt", "-o", t / "out.onnx", "--quant", "fp32"]


@case("o-hardlink-to-checkpoint", 1, "reads it")
def _(t, kit):
    ck = _copy_ckpt(t, kit)
    os.link(ck, t / "out.onnx")
    return ["export", ck, "-o", t / "out.onnx", "--quant", "fp32"]


@case("o-file-inside-data-folder", 1, "input folder")
def _(t, kit):
    ck = _copy_ckpt(t, kit)
    (t / "corpus").mkdir()
    (t / "corpus" / "a.py").write_text("def f(x):\n    return x\n" * 400)
    return ["export", ck, "--data", t / "corpus", "-o", t / "corpus" / "a.py", "--quant", "fp32"]


def _nanogpt(t, kit, *, dataset="shakespeare_char", chars=True):
    """A nanoGPT-format checkpoint (no 'family') under out/, with data/<dataset>/{meta.pkl,val.bin,train.bin}."""
    st = kit["state"]
    (t / "out").mkdir()
    n = 65
    from edgekit.models.gpt import build

    torch.manual_seed(0)
    cfg = {"block_size": 16, "vocab_size": n, "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0, "bias": True}
    torch.save({"model": build(cfg).state_dict(), "model_args": cfg, "iter_num": 1, "best_val_loss": 4.0,
                "config": {"dataset": dataset}}, t / "out" / "ckpt.pt")
    data = t / "data" / dataset
    data.mkdir(parents=True)
    itos = {i: chr(32 + i) for i in range(n)}
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": n, "itos": itos, "stoi": {c: i for i, c in itos.items()}}, f)
    ids = (np.arange(4000) % n).astype(np.uint16)
    ids.tofile(data / "val.bin")
    ids.tofile(data / "train.bin")
    del st
    return t / "out" / "ckpt.pt", data


@case("o-is-discovered-meta-pkl", 1, "reads it")
def _(t, kit):
    ck, data = _nanogpt(t, kit)
    return ["export", ck, "-o", data / "meta.pkl", "--quant", "fp32"]


@case("o-is-discovered-val-bin", 1, "reads it")
def _(t, kit):
    ck, data = _nanogpt(t, kit)
    return ["export", ck, "-o", data / "val.bin", "--quant", "fp32"]


@case("o-is-discovered-train-bin", 1, "reads it")
def _(t, kit):
    ck, data = _nanogpt(t, kit)
    return ["export", ck, "-o", data / "train.bin", "--quant", "fp32"]


@case("o-symlink-to-meta-arg", 1, "reads it")
def _(t, kit):
    ck, data = _nanogpt(t, kit)
    (t / "m.onnx").symlink_to(data / "meta.pkl")
    return ["export", ck, "--meta", data / "meta.pkl", "-o", t / "m.onnx", "--quant", "fp32"]


@case("o-fifo", 1, "not a regular file")
def _(t, kit):
    ck = _copy_ckpt(t, kit)
    os.mkfifo(t / "pipe")
    return ["export", ck, "-o", t / "pipe", "--quant", "fp32"]


@case("o-symlink-to-dev-null", 1, "not a regular file")
def _(t, kit):
    ck = _copy_ckpt(t, kit)
    (t / "null.onnx").symlink_to("/dev/null")
    return ["export", ck, "-o", t / "null.onnx", "--quant", "fp32"]


@case("o-sidecar-is-data", 1, "reads it")
def _(t, kit):
    ck = _copy_ckpt(t, kit)
    (t / "m.onnx.data").write_text("def f(x):\n    return x\n" * 400)
    return ["export", ck, "--data", t / "m.onnx.data", "-o", t / "m.onnx", "--quant", "fp32"]


@case("train-out-is-a-file", 1, "not a folder")
def _(t, kit):
    (t / "runs").write_text("my notes")
    return ["train", "phase1", "--out", t / "runs", "--max-iters", 1, "--tokens", 2000, "--quiet"]


@case("train-out-holds-data", 1, "reads")
def _(t, kit):
    (t / "runs").mkdir()
    (t / "runs" / "phase1.pt").write_text("def f(x):\n    return x\n" * 400)
    return ["train", "phase1", "--out", t / "runs", "--data", t / "runs" / "phase1.pt", "--max-iters", 1, "--quiet"]


@case("web-o-is-the-model", 1)
def _(t, kit):
    (t / "m.onnx").write_bytes(kit["onnx"])
    return ["web", t / "m.onnx", "-o", t / "m.onnx"]


# class 2: paths inside files are hints, never opened
@case("checkpoint-data-names-a-folder", 2, None)
def _(t, kit):
    """config['data'] names a folder of 'secrets': export must not read it (it verifies on the stdlib)."""
    (t / "secret").mkdir()
    # a file that cannot be tokenized as data would be: were it read, export would fail on it
    (t / "secret" / "key.txt").write_text("TOKEN=" + "\u2603" * 3000)
    ck = _save_gpt(t / "tiny.pt", config={"seed": 0, "data": str(t / "secret")})
    return {"argv": ["export", ck, "-o", t / "tiny.onnx", "--quant", "fp32", "--threads", "1"], "ok": True}


# class 3: tokenizers in model files and checkpoints are validated before tiktoken sees them
def _ranks_text(drop=(), extra=()):
    toks = [bytes([i]) for i in range(256) if i not in drop] + [b"de", b"f ", b"in", b"re", b"se", b"lf", *extra]
    return " ".join(base64.b64encode(t).decode() for t in toks)


def _tok_case(cid, tok_change, cmd="infer", expect="tokenizer"):
    @case(cid, 3, expect)
    def _(t, kit):
        meta = meta_with(kit)
        tok_change(meta["tokenizer"], meta)
        path = with_meta(kit, t / "m.onnx", meta)
        return {"infer": [cmd, path, "def get_", "--max-new-tokens", 4],
                "bench": [cmd, path], "inspect": [cmd, path]}[cmd]


_tok_case("rank-table-missing-a-byte", lambda tok, m: tok.update(ranks=_ranks_text(drop=(97,))), expect="single bytes")
_tok_case("rank-table-missing-a-byte-bench", lambda tok, m: tok.update(ranks=_ranks_text(drop=(0,))), "bench",
          expect="single bytes")
_tok_case("ranks-repeat", lambda tok, m: tok.update(ranks=_ranks_text(extra=(b"de",))), expect="not unique")
_tok_case("ranks-not-base64", lambda tok, m: tok.update(ranks=_ranks_text() + " !!!"), expect="corrupt")
_tok_case("ranks-not-a-string", lambda tok, m: tok.update(ranks=[1, 2, 3]), expect="must be a string")
_tok_case("ranks-missing", lambda tok, m: tok.pop("ranks"), expect="incomplete")
_tok_case("pat-str-matches-empty", lambda tok, m: tok.update(pat_str=r"\w*"), expect="empty string")
_tok_case("pat-str-empty-alternative", lambda tok, m: tok.update(pat_str=r"\w+|"), expect="empty string")
_tok_case("pat-str-lookahead-only", lambda tok, m: tok.update(pat_str=r"(?=\w)"), expect="empty string")
_tok_case("pat-str-empty", lambda tok, m: tok.update(pat_str=""), expect="non-empty")
_tok_case("pat-str-does-not-compile", lambda tok, m: tok.update(pat_str=r"(\w+"), expect="compile")
_tok_case("pat-str-backtrack-limit", lambda tok, m: tok.update(pat_str=r"(?:(?:a|a)+)+(?!x)b|\s+|\S"),
          expect="tokenizer")
_tok_case("pat-str-backtrack-limit-bench", lambda tok, m: tok.update(pat_str=r"(\w+\s?)*(?=\n)|\s+|\S"), "bench",
          expect="tokenizer")
_tok_case("pat-str-huge", lambda tok, m: tok.update(pat_str="a|" * 5000 + r"\S|\s"), expect="characters")
_tok_case("pat-str-not-text", lambda tok, m: tok.update(pat_str=7), expect="pat_str")
_tok_case("special-id-beyond-embedding", lambda tok, m: tok.update(special_tokens={"<|endoftext|>": 900_000}),
          expect="special")
_tok_case("special-id-inside-ranks", lambda tok, m: tok.update(special_tokens={"<|endoftext|>": 3}), expect="special")
_tok_case("special-id-not-int", lambda tok, m: tok.update(special_tokens={"<|endoftext|>": "262"}), expect="special")
_tok_case("tokenizer-wider-than-embedding",
          lambda tok, m: tok.update(ranks=_ranks_text(extra=(b"ab", b"cd", b"ef", b"gh"))), expect="rows")
_tok_case("char-itos-duplicates", lambda tok, m: m.update(tokenizer={"kind": "char", "itos": ["a", "a", "b"]}),
          expect="distinct")
_tok_case("char-itos-wider-than-embedding",
          lambda tok, m: m.update(tokenizer={"kind": "char", "itos": [chr(0x4e00 + i) for i in range(300)]}),
          expect="rows")
_tok_case("tokenizer-kind-escape", lambda tok, m: tok.update(kind="bpe\x1b]0;owned\x07"), expect="unknown tokenizer")


@case("checkpoint-tokenizer-missing-a-byte", 3, "single bytes")
def _(t, kit):
    spec = _bpe_spec()
    spec["ranks"] = _ranks_text(drop=(10,))
    ck = _save_gpt(t / "bad.pt", tokenizer=spec)
    return ["export", ck, "-o", t / "bad.onnx", "--quant", "fp32"]


@case("checkpoint-tokenizer-matches-empty", 3, "empty string")
def _(t, kit):
    ck = _save_gpt(t / "bad.pt", tokenizer={**_bpe_spec(), "pat_str": r"\s*"})
    return ["export", ck, "-o", t / "bad.onnx", "--quant", "fp32"]


# class 4: sizes read from files and options are bounded before anything is allocated
def _meta_case(cid, cls, expect, change, argv=("infer", "{m}", "def", "--max-new-tokens", "4")):
    @case(cid, cls, expect)
    def _(t, kit):
        meta = meta_with(kit)
        change(meta)
        path = with_meta(kit, t / "m.onnx", meta)
        return [str(a).replace("{m}", str(path)) for a in argv]


_meta_case("n-layer-1e12", 4, "n_layer", lambda m: m["config"].update(n_layer=10**12))
_meta_case("n-layer-1e12-bench", 4, "n_layer", lambda m: m["config"].update(n_layer=10**12), ("bench", "{m}"))
_meta_case("n-embd-3e6", 4, "n_embd", lambda m: m["config"].update(n_embd=3 * 10**6))
_meta_case("block-size-1e9", 4, "block_size", lambda m: (m["config"].update(block_size=10**9), m.update(block_size=10**9)))
_meta_case("vocab-size-1e9", 4, "vocab_size", lambda m: m.update(vocab_size=10**9))
_meta_case("n-layer-disagrees-with-graph", 4, "graph lacks", lambda m: m["config"].update(n_layer=3))
_meta_case("bytecnn-max-len-1.5e8", 4, "max_len", lambda m: m.update(family="bytecnn", max_len=150_000_000))
_meta_case("generation-max-new-tokens-1e12", 4, "max_new_tokens",
           lambda m: m["generation"].update(max_new_tokens=10**12), ("infer", "{m}", "def"))
_meta_case("metadata-nested-40-deep", 4, "nested", lambda m: m.update(notes=json.loads("[" * 40 + "]" * 40)))
_meta_case("config-100k-keys", 4, "keys", lambda m: m["config"].update({f"k{i}": i for i in range(100_000)}))


def _graph_file(t, kit, nodes, inits=(), name="bomb.onnx", meta=True):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(list(nodes), "g", [x], [y], initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    if meta:
        helper.set_model_props(m, {"edgekit": json.dumps(kit["meta"])})
    (t / name).write_bytes(m.SerializeToString())
    return t / name


def _i64(name, values):
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def _bomb_case(cid, nodes, inits, cmd="infer", meta=True):
    @case(cid, 4, "elements")
    def _(t, kit):
        path = _graph_file(t, kit, nodes(), inits(), meta=meta)
        return [cmd, path, "def"] if cmd == "infer" else [cmd, path]


_bomb_case("constantofshape-1.65gb", lambda: [helper.make_node("ConstantOfShape", ["shape"], ["big"]),
                                              helper.make_node("ReduceSum", ["big"], ["y"])],
           lambda: [_i64("shape", [20_000, 20_600])])
_bomb_case("constantofshape-plain-onnx", lambda: [helper.make_node("ConstantOfShape", ["shape"], ["y"])],
           lambda: [_i64("shape", [1 << 15, 1 << 15])], meta=False)
_bomb_case("constantofshape-bench", lambda: [helper.make_node("ConstantOfShape", ["shape"], ["y"])],
           lambda: [_i64("shape", [1 << 15, 1 << 15])], cmd="bench")
_bomb_case("constant-node-shape", lambda: [
    helper.make_node("Constant", [], ["shape"], value=_i64("v", [1 << 16, 1 << 14])),
    helper.make_node("ConstantOfShape", ["shape"], ["y"])], lambda: [])
_bomb_case("expand-1e9", lambda: [helper.make_node("Expand", ["one", "shape"], ["y"])],
           lambda: [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]), _i64("shape", [1 << 15, 1 << 15])])
_bomb_case("tile-1e9", lambda: [helper.make_node("Tile", ["one", "reps"], ["y"])],
           lambda: [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]), _i64("reps", [1 << 30])])
_bomb_case("range-1e9", lambda: [helper.make_node("Range", ["a", "b", "c"], ["y"])],
           lambda: [helper.make_tensor("a", TensorProto.INT64, [], [0]),
                    helper.make_tensor("b", TensorProto.INT64, [], [1 << 31]),
                    helper.make_tensor("c", TensorProto.INT64, [], [1])])


@case("constantofshape-inside-loop", 4, "elements")
def _(t, kit):
    body_in = [helper.make_tensor_value_info("i", TensorProto.INT64, []),
               helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    body_out = [helper.make_tensor_value_info("c2", TensorProto.BOOL, []),
                helper.make_tensor_value_info("z", TensorProto.FLOAT, None)]
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c2"]),
                              helper.make_node("ConstantOfShape", ["shape"], ["z"])], "body", body_in, body_out)
    loop = helper.make_node("Loop", ["n", ""], ["y"], body=body)
    return ["infer", _graph_file(t, kit, [loop], [_i64("shape", [1 << 15, 1 << 15]),
                                                  helper.make_tensor("n", TensorProto.INT64, [], [1])]), "def"]


@case("initializer-claims-more-than-it-carries", 4, "carries")
def _(t, kit):
    big = TensorProto(name="w", dims=[1 << 14, 1 << 14], data_type=TensorProto.FLOAT, raw_data=b"\0" * 64)
    return ["infer", _graph_file(t, kit, [helper.make_node("ReduceSum", ["w"], ["y"])], [big]), "def"]


@case("repeat-last-n-2e7", 4, "repeat")
def _(t, kit):
    (t / "m.onnx").write_bytes(kit["onnx"])
    return ["infer", t / "m.onnx", "def", "--repeat-last-n", 20_000_000, "--repeat-penalty", 1.1, "--max-new-tokens", 40]


@case("max-new-tokens-1e9", 4, "max")
def _(t, kit):
    (t / "m.onnx").write_bytes(kit["onnx"])
    return ["infer", t / "m.onnx", "def", "--max-new-tokens", 10**9]


# class 5: one clean line, whatever the file says
_meta_case("family-with-escape", 5, "family", lambda m: m.update(family="gpt\x1b]0;pwned\x07\x1b[2J"))
_meta_case("family-is-a-list", 5, "family", lambda m: m.update(family=["gpt"]))
_meta_case("config-is-a-list", 5, "config", lambda m: m.update(config=[1, 2]))
_meta_case("n-head-0", 5, "n_head", lambda m: m["config"].update(n_head=0))
_meta_case("n-head-does-not-divide", 5, "divide", lambda m: m["config"].update(n_head=3))
_meta_case("n-layer-float", 5, "n_layer", lambda m: m["config"].update(n_layer=1.5))
_meta_case("gpt-file-claims-bytecnn", 5, "bytecnn", lambda m: m.update(family="bytecnn", max_len=8))
_meta_case("bytecnn-max-len-string", 5, "max_len", lambda m: m.update(family="bytecnn", max_len="8"))
_meta_case("format-with-escape", 5, "format", lambda m: m.update(format="\x1b[31m2"))
_meta_case("eot-out-of-range", 5, "eot", lambda m: m["special_tokens"].update(eot=10**6))
_meta_case("window-keep-0", 5, "window", lambda m: m["window"].update(keep=0))
_meta_case("inspect-family-list", 5, "family", lambda m: m.update(family=["gpt"]), ("inspect", "{m}"))
_meta_case("inspect-n-head-0", 5, "n_head", lambda m: m["config"].update(n_head=0), ("inspect", "{m}"))
_meta_case("session-config-escape", 5, "session_config",
           lambda m: m.setdefault("deploy", {}).update(session_config={"\x1b[2Jx": "1"}))


@case("metadata-nested-100k-raw", 5, "JSON")
def _(t, kit):
    return ["infer", with_meta(kit, t / "m.onnx", None, raw="[" * 100_000 + "]" * 100_000), "def"]


@case("metadata-not-utf8", 5, None)
def _(t, kit):
    m = onnx.ModelProto()
    m.CopyFrom(kit["model"])
    del m.metadata_props[:]
    raw = m.SerializeToString()
    entry = b"\x0a\x07edgekit\x12\x04\xff\xfe\x1b\x07"
    raw += b"\x72" + bytes([len(entry)]) + entry  # field 14 (metadata_props), hand-encoded: invalid UTF-8 value
    (t / "m.onnx").write_bytes(raw)
    return ["infer", t / "m.onnx", "def"]


@case("onnxruntime-rejects-graph", 5, "not a loadable")
def _(t, kit):
    return ["infer", _graph_file(t, kit, [helper.make_node("NoSuchOp", ["x"], ["y"], domain="")]), "def"]


@case("onnxruntime-type-mismatch", 5, "not a loadable")
def _(t, kit):
    return ["bench", _graph_file(t, kit, [helper.make_node("Add", ["x", "s"], ["y"])],
                                 [helper.make_tensor("s", TensorProto.INT64, [1], [1])])]


@case("budget-toml-nested", 5, "budgets")
def _(t, kit):
    (t / "m.onnx").write_bytes(kit["onnx"])
    (t / "b.toml").write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
    return ["bench", t / "m.onnx", "--budget", t / "b.toml"]


@case("budget-toml-deep-tables", 5, "budgets")
def _(t, kit):
    (t / "m.onnx").write_bytes(kit["onnx"])
    (t / "b.toml").write_text("[" + ".".join(f"t{i}" for i in range(40)) + "]\nmax = 1\nsource = 'x'\n")
    return ["bench", t / "m.onnx", "--budget", t / "b.toml"]


@case("budget-toml-wrong-types", 5, "budgets")
def _(t, kit):
    (t / "m.onnx").write_bytes(kit["onnx"])
    (t / "b.toml").write_text("[gpt]\nfile_bytes = { max = 'big', source = 'me' }\n")
    return ["bench", t / "m.onnx", "--budget", t / "b.toml"]


@case("budget-toml-family-not-table", 5, "budgets")
def _(t, kit):
    (t / "m.onnx").write_bytes(kit["onnx"])
    (t / "b.toml").write_text("gpt = 3\n")
    return ["bench", t / "m.onnx", "--budget", t / "b.toml"]


@case("train-seed-negative", 5, "seed")
def _(t, kit):
    return ["train", "phase1", "--out", t / "runs", "--seed", -1, "--max-iters", 1, "--tokens", 2000, "--quiet"]


@case("train-seed-huge", 5, "seed")
def _(t, kit):
    return ["train", "phase1", "--out", t / "runs", "--seed", 2**70, "--max-iters", 1, "--tokens", 2000, "--quiet"]


# class 4, checkpoints: crafted torch.save archives (a pickle written with persistent ids, as torch.save does)
class _Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage, size, stride, offset=0):
        self.args = (storage, offset, tuple(size), tuple(stride), False, __import__("collections").OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def craft(path: Path, obj, entries: dict, *, compress=()):
    """A torch.save-style zip: ``obj`` pickled with storages as persistent ids; ``entries``: key -> bytes, or an
    int (that many zero bytes, streamed); keys in ``compress`` are deflated (torch.save never does)."""
    import io
    import zipfile

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for key, data in entries.items():
            kind = zipfile.ZIP_DEFLATED if key in compress else zipfile.ZIP_STORED
            info = zipfile.ZipInfo(f"archive/data/{key}")
            info.compress_type = kind
            with z.open(info, "w", force_zip64=True) as f:
                if isinstance(data, int):
                    chunk = bytes(1 << 24)
                    for i in range(0, data, len(chunk)):
                        f.write(chunk[: min(len(chunk), data - i)])
                else:
                    f.write(data)
    return path


def _ckpt_dict(kit, model=None, **over):
    st = kit["state"]
    return {"model": model if model is not None else {"w": _Tensor(_Storage("0", 4), (4,), (1,))},
            "model_args": st["model_args"], "iter_num": 1, "best_val_loss": 1.0, "config": {}, "family": "gpt",
            "tokenizer": st["tokenizer"], **over}


def _ckpt_case(cid, cls, expect, build):
    @case(cid, cls, expect)
    def _(t, kit):
        path = build(t, kit)
        return ["export", path, "-o", t / "out.onnx", "--quant", "fp32"]


_ckpt_case("zip-bomb-1.2gb-entry", 4, "zip bomb", lambda t, kit: craft(
    t / "bomb.pt", _ckpt_dict(kit, {"w": _Tensor(_Storage("0", 300_000_000), (300_000_000,), (1,))}),
    {"0": 1_200_000_000}, compress=("0",)))
_ckpt_case("compressed-entry", 4, "compressed", lambda t, kit: craft(
    t / "c.pt", _ckpt_dict(kit), {"0": bytes(16)}, compress=("0",)))
_ckpt_case("stride-0-tensor-1.6gb", 4, "stride 0", lambda t, kit: craft(
    t / "s0.pt", _ckpt_dict(kit, {"w": _Tensor(_Storage("0", 1), (40_000, 10_000), (0, 0))}), {"0": bytes(4)}))
_ckpt_case("storage-claims-more-than-entry", 4, "claims", lambda t, kit: craft(
    t / "big.pt", _ckpt_dict(kit, {"w": _Tensor(_Storage("0", 10**9), (10**9,), (1,))}), {"0": bytes(4)}))
_ckpt_case("view-past-storage", 4, "past its storage", lambda t, kit: craft(
    t / "v.pt", _ckpt_dict(kit, {"w": _Tensor(_Storage("0", 10), (10,), (1,), offset=5)}), {"0": bytes(40)}))
_ckpt_case("storage-without-entry", 4, "no data", lambda t, kit: craft(
    t / "n.pt", _ckpt_dict(kit, {"w": _Tensor(_Storage("7", 1), (1,), (1,))}), {"0": bytes(4)}))


def _nested(kind, depth):
    v = ()
    for _ in range(depth):
        v = (v, v) if kind == "tuple" else [v, v]
    return v


class _KeyedDict:
    """Pickles as an OrderedDict with one (key, value) item, without hashing the key here (a nested tuple of shared
    references takes 2^depth steps to hash: that is the attack)."""

    def __init__(self, key, value):
        self.item = (key, value)

    def __reduce__(self):
        import collections

        return (collections.OrderedDict, (), None, None, iter([self.item]))


_ckpt_case("huge-tuple-key", 4, "dict key", lambda t, kit: craft(
    t / "k.pt", _ckpt_dict(kit, config=_KeyedDict(_nested("tuple", 40), 1)), {"0": bytes(16)}))
_ckpt_case("shared-reference-list-2^40", 4, "expands", lambda t, kit: craft(
    t / "l.pt", _ckpt_dict(kit, config={"data": _nested("list", 40)}), {"0": bytes(16)}))


def _cyclic():
    a = []
    a.append(a)
    return a


_ckpt_case("list-contains-itself", 4, "itself", lambda t, kit: craft(
    t / "cy.pt", _ckpt_dict(kit, config={"x": _cyclic()}), {"0": bytes(16)}))


def _args_case(cid, cls, expect, change, family="gpt"):
    @case(cid, cls, expect)
    def _(t, kit):
        args = dict(kit["state"]["model_args"])
        change(args)
        ck = _save_gpt(t / "a.pt", model_args=args, family=family)
        return ["export", ck, "-o", t / "out.onnx", "--quant", "fp32"]


_args_case("model-args-n-layer-1e6", 4, "n_layer", lambda a: a.update(n_layer=10**6))
_args_case("model-args-n-embd-3e6", 4, "n_embd", lambda a: a.update(n_embd=3 * 10**6))
_args_case("model-args-more-params-than-carried", 4, "do not match", lambda a: a.update(n_layer=200, n_embd=1024, n_head=16))
_args_case("bytecnn-args-1.3g-params-carries-8k", 4, "carries", lambda a: (a.clear(), a.update(
    max_len=8, emb_dim=16, channels=[8192, 8192], kernels=[5, 5], strides=[1, 1], hidden=0)), family="bytecnn")
_args_case("model-args-vocab-1e9", 4, "vocab_size", lambda a: a.update(vocab_size=10**9))
_args_case("model-args-block-1e9", 4, "block_size", lambda a: a.update(block_size=10**9))
_args_case("model-args-n-head-0", 5, "n_head", lambda a: a.update(n_head=0))
_args_case("model-args-n-head-not-dividing", 5, "divide", lambda a: a.update(n_head=3))
_args_case("model-args-n-layer-text", 5, "n_layer", lambda a: a.update(n_layer="6"))
_args_case("model-args-list-of-1e5", 5, "model_args", lambda a: a.update(extra=list(range(100_000))))
_args_case("model-args-bytecnn-max-len-1.5e8", 4, "max_len", lambda a: a.update(max_len=150_000_000), family="bytecnn")


@case("checkpoint-family-is-a-list", 5, "family")
def _(t, kit):
    return ["export", _save_gpt(t / "f.pt", family=["gpt"]), "-o", t / "out.onnx"]


@case("checkpoint-family-escape", 5, "family")
def _(t, kit):
    return ["export", _save_gpt(t / "f.pt", family="gpt\x1b]2;owned\x07"), "-o", t / "out.onnx"]


def _meta_pkl_case(cid, cls, expect, meta):
    @case(cid, cls, expect)
    def _(t, kit):
        ck, data = _nanogpt(t, kit)
        with open(data / "meta.pkl", "wb") as f:
            pickle.dump(meta(), f)
        return ["export", ck, "-o", t / "out.onnx", "--quant", "fp32"]


_meta_pkl_case("meta-pkl-shared-reference-vocab-size", 4, "vocab_size",
               lambda: {"itos": {i: chr(32 + i) for i in range(65)}, "vocab_size": _nested("list", 26)})
_meta_pkl_case("meta-pkl-shared-reference-itos", 4, "itos", lambda: {"itos": _nested("list", 26)})
_meta_pkl_case("meta-pkl-itos-not-text", 5, "itos", lambda: {"itos": {i: i for i in range(65)}, "vocab_size": 65})
_meta_pkl_case("meta-pkl-itos-escape", 5, None,
               lambda: {"itos": {0: "\x1b]0;x\x07", 1: "b"}, "vocab_size": "\x1b[2J"})


@case("vectors-cache-is-a-file", 5, "EDGEKIT_CACHE")
def _(t, kit):
    (t / "cache").write_text("not a folder")
    return {"argv": ["sentences", "Hello there. Fine.", "-o", t / "x.npy"], "module": "edgekit.train.vectors",
            "env": {"EDGEKIT_CACHE": str(t / "cache")}}


@case("vectors-o-is-the-text-file", 1, "reads it")
def _(t, kit):
    (t / "text.npy").write_text("Hello there. Fine.")
    return {"argv": ["tokens", f"@{t / 'text.npy'}", "-o", t / "text.npy"], "module": "edgekit.train.vectors"}


def _inspect_ok(cid, change):
    @case(cid, 5)
    def _(t, kit):
        meta = meta_with(kit)
        change(meta)
        return {"argv": ["inspect", with_meta(kit, t / "m.onnx", meta)], "clean_ok": True}


_inspect_ok("inspect-escape-in-scheme", lambda m: m["quantization"].update(scheme="fp32\x1b]0;pwned\x07"))
_inspect_ok("inspect-escape-in-source", lambda m: m.update(source_checkpoint="a\x1b[2J\x1b[1;1Hb.pt", source_sha256="0" * 64))
_inspect_ok("inspect-escape-in-config-key", lambda m: m["config"].update({"\x1b[8mhidden": 1}))
_inspect_ok("inspect-c1-and-bidi", lambda m: m["deploy"].update(numerics="cpu\x9b31m\u202eevil"))


# ----- the test ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build, expect", CASES)
def test_hostile(build, expect, kit, tmp_path):
    spec = build(tmp_path, kit)
    spec = spec if isinstance(spec, dict) else {"argv": spec}
    before = snapshot(tmp_path)
    r = edgekit(spec["argv"], cwd=tmp_path, env=spec.get("env"), module=spec.get("module", "edgekit"))
    after = snapshot(tmp_path)
    if spec.get("clean_ok"):  # a valid file whose metadata holds control characters: shown, escaped
        assert r.code == 0 and "Traceback" not in r.stderr, r
        assert not any(ord(c) < 32 and c != "\n" or 0x7f <= ord(c) <= 0x9f or 0x202a <= ord(c) <= 0x202e
                       for c in r.stdout + r.stderr), r
        assert before == after
        return
    if spec.get("ok"):  # a case that must succeed without touching what a file pointed at
        assert r.code == 0 and "Traceback" not in r.stderr, r
        assert r.peak < MEMORY and r.seconds < SECONDS * 2, r
        out = Path(spec["argv"][spec["argv"].index("-o") + 1])
        meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["edgekit"])
        text = json.dumps(meta)
        assert str(tmp_path) not in text and "/" + "home" not in text, "absolute paths in the output file"
        assert meta["verification"]["data"]["name"] == "stdlib", meta["verification"]["data"]
        assert not any(a.startswith(str(tmp_path / "secret")) for a in after if a not in before)
        assert "hint" in r.stderr
        return
    assert_refused(r, before, after, expect)


# ----- the Python API: the same refusals as exceptions an application's `except Exception` catches -----------
@pytest.mark.parametrize("change", [
    lambda tok: tok.update(ranks=_ranks_text(drop=(97,))),
    lambda tok: tok.update(pat_str=r"\w*"),
    lambda tok: tok.update(pat_str=r"(?:(?:a|a)+)+(?!x)b|\s+|\S"),
], ids=["missing-byte", "matches-empty", "backtrack-limit"])
def test_load_raises_an_edgekit_error_not_a_panic(change, kit, tmp_path, capfd):
    from edgekit.errors import EdgekitError, TokenizerError
    from edgekit.runtime import load

    meta = meta_with(kit)
    change(meta["tokenizer"])
    path = with_meta(kit, tmp_path / "m.onnx", meta)
    try:
        load(path)
    except Exception as e:  # noqa: BLE001 - what an application writes: a panic would pass through it
        assert isinstance(e, TokenizerError) and isinstance(e, EdgekitError), repr(e)
    else:
        raise AssertionError("loaded")
    out, err = capfd.readouterr()
    assert "panicked" not in err and not out, err


def test_encode_panic_after_load_is_a_tokenizer_error(capfd):
    """A pattern that passes the probes may still exceed the backtrack limit on other text: encode raises."""
    import tiktoken

    from edgekit.errors import TokenizerError
    from edgekit.runtime.tokenizer import Tokenizer

    enc = tiktoken.Encoding("t", pat_str=r"(?:(?:q|q)+)+(?!x)z|\s+|\S", mergeable_ranks={bytes([i]): i for i in range(256)},
                            special_tokens={})
    with pytest.raises(TokenizerError):
        Tokenizer({"kind": "bpe"}, enc=enc).encode("q" * 60 + "y")
