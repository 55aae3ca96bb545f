"""Run one `edgekit export` in a fresh process and measure its memory: peak RSS and the RSS after imports.

    python benchmarks/export_rss.py ckpt.pt -o out.onnx [export options...]
    # prints one JSON line: {"rc", "seconds", "baseline_rss_mb", "peak_rss_mb", "growth_mb", "file_bytes", "data_bytes"}

The baseline is the process's RSS once torch, onnx, onnxruntime and edgekit's exporter are imported (what
every export pays before reading the checkpoint); the peak is the kernel's high-water mark (VmHWM), so a
short spike between samples is never missed. Used by benchmarks/test_scale.py (the memory gate and the
big-model runs).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def main(argv: list[str]) -> int:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401

    import edgekit.export.gpt  # noqa: F401
    from edgekit.cli import cli

    baseline = _status_mb("VmRSS")
    t0 = time.time()
    try:
        rc = cli(["export", *argv], prog_name="edgekit", standalone_mode=True)
    except SystemExit as e:
        rc = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    rc = 0 if rc is None else rc  # click's standalone mode returns on success
    seconds = time.time() - t0
    peak = _status_mb("VmHWM")
    out = Path(argv[argv.index("-o") + 1]) if "-o" in argv else None
    data = out.with_name(out.name + ".data") if out else None
    print(json.dumps({"rc": rc, "seconds": round(seconds, 1), "baseline_rss_mb": round(baseline, 1),
                      "peak_rss_mb": round(peak, 1), "growth_mb": round(peak - baseline, 1),
                      "file_bytes": out.stat().st_size if out and out.exists() else None,
                      "data_bytes": data.stat().st_size if data and data.exists() else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
