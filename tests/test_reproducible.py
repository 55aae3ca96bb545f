"""The same checkpoint and options give the same file on a quiet or a busy machine (issue 24, class 6).

Each checkpoint is exported three times by the real CLI, the third time beside two processes that keep both
cores busy. The files must be equal byte for byte once the run-dependent timings (the ``edgekit.run``
metadata entry, docs/model-file.md) are set aside: the graph, the weights and the ``edgekit`` entry are
the model's identity. EDGEKIT_REPRO_CKPTS (paths joined by os.pathsep) adds checkpoints, e.g. a trained phase3.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from edgekit.export.common import RUN_KEY

ROOT = Path(__file__).resolve().parents[1]
CKPTS = [ROOT / "examples/reference/nano-cnn-wordfreq.pt", ROOT / "examples/reference/soma-stdlib.pt"]
CKPTS += [Path(p) for p in os.environ.get("EDGEKIT_REPRO_CKPTS", "").split(os.pathsep) if p]
BUSY = "import time\nt = time.time()\nwhile time.time() - t < 600: sum(i * i for i in range(10000))\n"


def _export(ckpt: Path, out: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "edgekit", "export", str(ckpt), "-o", str(out), "--threads", "1"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]


def _identity(path: Path) -> tuple[str, dict]:
    """sha256 of the file without its run entry, and the run entry's keys (which must hold only timings)."""
    m = onnx.load(str(path))
    run = [p for p in m.metadata_props if p.key == RUN_KEY]
    for p in run:
        m.metadata_props.remove(p)
    return hashlib.sha256(m.SerializeToString(deterministic=True)).hexdigest(), {p.key: p.value for p in run}


@pytest.mark.parametrize("ckpt", CKPTS, ids=lambda p: p.stem)
def test_same_checkpoint_same_file_quiet_or_busy(ckpt, tmp_path):
    outs = [tmp_path / f"run{i}.onnx" for i in range(3)]
    _export(ckpt, outs[0])
    _export(ckpt, outs[1])
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)]  # both cores taken
    try:
        _export(ckpt, outs[2])
    finally:
        for p in busy:
            p.kill()
            p.wait()
    ids = [_identity(p) for p in outs]
    assert ids[0][0] == ids[1][0] == ids[2][0], "the same checkpoint gave different model files"
    assert all(RUN_KEY in run for _, run in ids), "the export's timings are recorded apart (edgekit.run)"
    meta = next(p.value for p in onnx.load(str(outs[0])).metadata_props if p.key == "edgekit")
    assert '"seconds"' not in meta and "tokens_per_s" not in meta and "p50_" not in meta
