"""`edgekit web MODEL -o DIR`: a static site that runs an edgekit model in the browser, offline.

    summary = write_site("soma-web.onnx", out="site/")      # then: python -m http.server -d site
    summary["gzip_bytes"], summary["files"]

The site is the model file, edgekit's JavaScript runtime (this folder's ES modules, no build step),
onnxruntime-web's wasm build (from this folder's node_modules, installed by `npm ci` / `make install`)
and an index.html with a prompt box, streamed output and tokens/s. Any static file server works: nothing
is fetched from elsewhere. The folder is written next to DIR and renamed into place, so a failure leaves
nothing half-written; an existing, non-empty DIR is refused rather than overwritten.

Only files exported with ``--target web`` are accepted: a ``cpu`` file's quality figures were verified
under native onnxruntime numerics, which the browser does not reproduce (MatMulNBits' int8 compute), and
its MatMulNBits run ~8x slower in wasm; a user asking for a site expects the figures to hold there.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

from edgekit.errors import EdgekitError, ModelFileError
from edgekit.runtime.modelfile import open_model

HERE = Path(__file__).resolve().parent
MODULES = ("edgekit.js", "modelfile.js", "random.js", "sampling.js", "tokenizer.js", "page.js")
# onnxruntime-web's wasm-only ES module build and the single-threaded-capable SIMD wasm it loads
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
MODEL_NAME = "model.onnx"


def ort_dist() -> Path:
    """onnxruntime-web's dist folder, or a clear error saying how to install it."""
    dist = HERE / "node_modules" / "onnxruntime-web" / "dist"
    if not all((dist / f).is_file() for f in ORT_FILES):
        raise EdgekitError(f"onnxruntime-web is not installed in {HERE}; run `npm ci` there "
                           "(`make install` does) and try again")
    return dist


def check_web_model(path: str | os.PathLike):
    """The file's ModelCard if the browser runtime can run it: a GPT file exported with --target web."""
    _, card = open_model(path, threads=1)
    if card.family != "gpt":
        raise ModelFileError(f"{path} is a {card.family} model; the browser runtime runs gpt models only")
    if card.deploy.target != "web":
        raise ModelFileError(f"{path} was exported for target {card.deploy.target!r}: its quality was verified "
                             "under native onnxruntime numerics, which the browser does not reproduce; export it "
                             "with `edgekit export CHECKPOINT --target web`")
    return card


def _gzip_size(path: Path) -> int:
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=9))


def write_site(model: str | os.PathLike, *, out: str | os.PathLike) -> dict:
    """Write the site for ``model`` into the folder ``out``; returns files, bytes and gzipped bytes."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgekitError(f"output {str(out)!r} exists and is not an empty folder; choose a new one")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise EdgekitError(f"output folder {str(parent)!r} does not exist; create it or pick another path")
    card = check_web_model(model)
    dist = ort_dist()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    try:
        shutil.copyfile(model, tmp / MODEL_NAME)
        shutil.copyfile(HERE / "site" / "index.html", tmp / "index.html")
        (tmp / "edgekit").mkdir()
        for f in MODULES:
            shutil.copyfile(HERE / f, tmp / "edgekit" / f)
        (tmp / "ort").mkdir()
        for f in ORT_FILES:
            shutil.copyfile(dist / f, tmp / "ort" / f)
        os.chmod(tmp, 0o755)
        files = {str(p.relative_to(tmp)): (p.stat().st_size, _gzip_size(p)) for p in sorted(tmp.rglob("*")) if p.is_file()}
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"site": str(out), "model": str(model), "scheme": card.quantization.scheme, "numerics": card.deploy.numerics,
            "files": {k: {"bytes": b, "gzip_bytes": g} for k, (b, g) in files.items()},
            "bytes": sum(b for b, _ in files.values()), "gzip_bytes": sum(g for _, g in files.values()),
            "model_gzip_bytes": files[MODEL_NAME][1]}
