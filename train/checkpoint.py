"""Checkpoints: nanoGPT's format plus edgekit's self-description, written atomically, read safely.

    save_checkpoint(path, model=m, model_args=cfg, family="gpt", tokenizer=spec, iter_num=i, ...)
    ckpt = load_checkpoint("runs/p3/phase3.pt")      # or a karpathy/nanoGPT ckpt.pt
    model = ckpt.build_model()

Loading never executes code from the file: ``torch.load(weights_only=True)`` only, and a file that
needs arbitrary unpickling is refused. The file is memory-mapped: only the tensors that are used are
ever read (a gpt2-xl nanoGPT checkpoint is 18.7 GB, two thirds of it AdamW's state). nanoGPT checkpoints (no ``family`` key) are GPT with the
GPT-2 tokenizer unless ``meta`` (a character-level ``meta.pkl``) is given.
"""
from __future__ import annotations

import hashlib
import io
import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

import edgekit
from edgekit.errors import CheckpointError
from edgekit.fileio import atomic_path
from edgekit.guard import safe_text, shown
from edgekit.limits import LIMITS, check_gpt_config, check_range, is_int
from edgekit.registry import FAMILIES, get_family
from edgekit.train.checkpoint_scan import scan_checkpoint
from edgekit.train.nanogpt import DatasetFiles, find_dataset


@dataclass
class Checkpoint:
    path: Path
    family: str  # registry key
    model_args: dict  # architecture config
    state_dict: dict  # parameter name -> tensor, compile prefix stripped
    tokenizer: dict | None  # tokenizer spec (runtime.tokenizer.from_spec) or None for vector families
    iter_num: int = 0
    best_val_loss: float | None = None
    config: dict = field(default_factory=dict)  # training configuration
    extra: dict = field(default_factory=dict)  # everything else (optimizer, rng state, log)
    sha256: str = ""
    source: str = "edgekit"  # "edgekit" or "nanogpt"
    meta_path: Path | None = None  # the meta.pkl the tokenizer came from (--meta or nanoGPT's data folder)
    dataset: DatasetFiles | None = None  # nanoGPT's data/<dataset> files found for this checkpoint

    def read_paths(self) -> tuple[Path, ...]:
        """Files loading read or found for export beyond the checkpoint (meta.pkl, nanoGPT's val.bin, train.bin)."""
        d = self.dataset
        found = (self.meta_path,) + ((d.meta, d.val_bin, d.train_bin) if d is not None else ())
        return tuple(p for p in found if p is not None)

    def build_model(self):
        """Instantiate the family's model and load the weights strictly, in eval mode. The model is built on
        torch's meta device first: one whose parameters outnumber the weights the file carries is refused
        before any memory is allocated for it."""
        models = get_family(self.family).models()
        try:
            with torch.device("meta"):
                planned = sum(p.numel() for p in models.build(self.model_args).parameters())
            carried = sum(v.numel() for v in self.state_dict.values())
            if planned > carried:
                raise CheckpointError(f"checkpoint {self.path}: model_args describe {planned:,} parameters but the "
                                      f"file carries {carried:,} weights")
            model = models.build(self.model_args)
        except (TypeError, ValueError, AssertionError, ZeroDivisionError, OverflowError) as e:
            raise CheckpointError(f"checkpoint {self.path}: model_args do not describe a valid "
                                  f"{self.family} model ({safe_text(str(e), 160)})") from None
        try:
            missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
        except RuntimeError as e:  # shape mismatches
            first = next((ln.strip() for ln in str(e).split(". ") if "size mismatch" in ln), str(e)[:200])
            raise CheckpointError(f"checkpoint {self.path}: weights do not match model_args ({first[:200]})") from None
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {self.path}: weights do not match model_args "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        return model.eval()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | Path, *, model, model_args: dict, family: str, tokenizer: dict | None,
                    iter_num: int, best_val_loss: float | None, config: dict, **extra) -> Path:
    """Write atomically: nanoGPT's keys (model, model_args, iter_num, best_val_loss, config) + edgekit's."""
    obj = {
        "model": model.state_dict(),  # tied wte/lm_head share storage: saved once
        "model_args": dict(model_args),
        "iter_num": int(iter_num),
        "best_val_loss": None if best_val_loss is None else float(best_val_loss),
        "config": dict(config),
        "family": family,
        "tokenizer": tokenizer,
        "edgekit_version": edgekit.__version__,
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


META_PKL_BYTES = 64 << 20  # a character table of a million entries is ~10 MB pickled


def _torch_load(path: Path) -> dict:
    """``torch.load(weights_only=True)``, memory-mapped: tensors stay in the file until read, so a
    nanoGPT checkpoint's AdamW state (twice the weights) is never loaded. Files in torch's legacy
    (non-zip) format cannot be mapped and are read whole."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        # a pickle that asks for globals (classes, functions) is refused; garbage is just unreadable
        if "unsupported global" in msg.lower() or "this file can still be loaded" in msg.lower():
            raise CheckpointError(
                f"refusing to load {path}: it needs arbitrary unpickling (code could run); edgekit loads "
                "only tensors and plain data (torch.load weights_only=True)") from None
        detail = next((ln.strip() for ln in msg.splitlines() if ln.strip().startswith(("Unsupported", "Invalid"))),
                      "corrupt pickle")
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({detail[:120]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, OSError, AttributeError,
            IndexError, TypeError, UnicodeDecodeError, MemoryError, OverflowError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({first})") from None


def _check_model_args(path: Path, family: str, args: dict) -> None:
    """model_args within edgekit/limits.py before any model is built: plain values of bounded size, and the
    family's sizes (GPT: layers, heads dividing the width, block, vocabulary; bytecnn: max_len)."""
    if len(args) > LIMITS.config_items:
        raise CheckpointError(f"checkpoint {path}: model_args has {len(args):,} keys; at most {LIMITS.config_items:,}")
    for k, v in args.items():
        vals = v if isinstance(v, (list, tuple)) else [v]
        if not isinstance(k, str) or len(vals) > 1024 or not all(
                v2 is None or isinstance(v2, (bool, float, str)) and len(str(v2)) <= 1000
                or is_int(v2) and -(1 << 31) <= v2 <= 1 << 24 for v2 in vals):
            raise CheckpointError(f"checkpoint {path}: model_args {safe_text(k, 40)} must be a number, text or a short "
                                  f"list of them, each integer at most {1 << 24:,}; got {safe_text(v, 60)}")
    where = f"checkpoint {path}: model_args"
    if family == "gpt":
        check_gpt_config(args, where=where, error=CheckpointError)
    elif family == "bytecnn":
        check_range("max_len", args.get("max_len"), 1, LIMITS.bytecnn_max_len, where=where, error=CheckpointError)


def load_meta_pkl(path: str | Path) -> dict:
    """nanoGPT's character-level meta.pkl, read with an unpickler that refuses every global."""

    class _NoGlobals(pickle.Unpickler):
        def find_class(self, module, name):
            raise CheckpointError(f"refusing {path}: meta.pkl references {module}.{name}; only plain data is allowed")

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"meta file {str(path)!r} does not exist")
    if path.stat().st_size > META_PKL_BYTES:
        raise CheckpointError(f"{path} is {path.stat().st_size:,} bytes; a meta.pkl holds at most {META_PKL_BYTES:,}")
    try:
        meta = _NoGlobals(io.BytesIO(path.read_bytes())).load()
    except CheckpointError:
        raise
    except Exception as e:  # any malformed pickle: report it as bad input (its text may be the file's)
        raise CheckpointError(f"{path} is not a readable meta.pkl ({type(e).__name__}: {safe_text(str(e), 120)})") from None
    itos = meta.get("itos") if isinstance(meta, dict) else None
    if not isinstance(itos, dict) or not itos:
        raise CheckpointError(f"{path} has no 'itos' character table")
    if len(itos) > LIMITS.tokenizer_entries:
        raise CheckpointError(f"{path}: 'itos' has {len(itos):,} entries; at most {LIMITS.tokenizer_entries:,}")
    try:
        table = [itos[i] for i in range(len(itos))]
    except (KeyError, TypeError):
        raise CheckpointError(f"{path}: 'itos' must map 0..n-1 to characters") from None
    if not all(isinstance(c, str) and 0 < len(c) <= 16 for c in table):
        raise CheckpointError(f"{path}: 'itos' must map 0..n-1 to characters (short strings)")
    declared = meta.get("vocab_size", len(table))
    if declared != len(table):
        raise CheckpointError(f"{path}: 'vocab_size' is {safe_text(declared, 40)} but 'itos' has {len(table)} characters")
    return {"kind": "char", "itos": table}


def _nanogpt_tokenizer(path: Path, model_args: dict, config: dict, meta: str | Path | None):
    """(tokenizer spec, meta.pkl used, dataset files) for a nanoGPT checkpoint, as sample.py decides:
    --meta if given, else data/<config['dataset']>/meta.pkl if found, else GPT-2 BPE; checked against
    the model's vocabulary so a wrong meta.pkl is an error, not a trimmed head and garbage output."""
    files = find_dataset(path, config)
    meta_path = Path(meta) if meta is not None else files.meta
    vocab = model_args.get("vocab_size")
    if meta_path is None:
        if isinstance(vocab, int) and vocab < 50257:
            where = ", ".join(str(d) for d in files.searched) or "nowhere: the checkpoint's config names no dataset"
            raise CheckpointError(
                f"checkpoint {path} has a {vocab}-id vocabulary (a character-level model?) but no meta.pkl was "
                f"found (looked in {where}); pass --meta data/<dataset>/meta.pkl")
        return {"kind": "gpt2"}, None, files
    spec = load_meta_pkl(meta_path)
    n = len(spec["itos"])
    if isinstance(vocab, int) and n != vocab:
        raise CheckpointError(
            f"{meta_path} has {n} characters but checkpoint {path} has a {vocab:,}-id vocabulary"
            + (" (a GPT-2 BPE model: it needs no meta.pkl)" if vocab >= 50257 else "")
            + "; give the meta.pkl of the dataset it was trained on")
    return spec, meta_path, files


def _check_finite(path: Path, state: dict) -> None:
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: state entry {k!r} is not a tensor")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"checkpoint {path}: weight {k!r} contains NaN or infinite values")


def load_checkpoint(path: str | Path, *, meta: str | Path | None = None) -> Checkpoint:
    """Read an edgekit or karpathy/nanoGPT checkpoint, validating everything export needs."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder; give the .pt file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty")
    scan_checkpoint(path)  # sizes, strides and the pickle's shape against what the file carries
    obj = _torch_load(path)
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path} is not an edgekit or nanoGPT checkpoint (expected a dict with 'model')")
    family = obj.get("family", "gpt")
    if not isinstance(family, str) or family not in FAMILIES:
        raise CheckpointError(f"checkpoint {path} has family {shown(family, 60)}; known: {', '.join(FAMILIES)}")
    model_args = obj.get("model_args")
    if not isinstance(model_args, dict) or not model_args:
        raise CheckpointError(f"checkpoint {path} has no 'model_args' dict describing the architecture")
    state = obj["model"]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"checkpoint {path}: 'model' must be a non-empty state dict")
    from edgekit.models.gpt import strip_compile_prefix  # the prefix rule is shared by every family

    state = strip_compile_prefix(state)
    _check_finite(path, state)
    source = "edgekit" if "family" in obj else "nanogpt"
    config = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    tokenizer, meta_path, files = obj.get("tokenizer"), None, None
    if source == "nanogpt":
        tokenizer, meta_path, files = _nanogpt_tokenizer(path, model_args, config, meta)
    elif meta is not None:
        tokenizer, meta_path = load_meta_pkl(meta), Path(meta)
    best = obj.get("best_val_loss")
    best = float(best) if isinstance(best, (int, float, torch.Tensor)) else None
    if best is not None and not math.isfinite(best):
        best = None
    known = {"model", "model_args", "iter_num", "best_val_loss", "config", "family", "tokenizer"}
    _check_model_args(path, family, model_args)  # before any model is built (export builds it)
    return Checkpoint(
        path=path, family=family, model_args=dict(model_args), state_dict=state, tokenizer=tokenizer,
        iter_num=int(obj.get("iter_num", 0) or 0), best_val_loss=best, config=config,
        extra={k: v for k, v in obj.items() if k not in known}, sha256=file_sha256(path), source=source,
        meta_path=meta_path, dataset=files)
