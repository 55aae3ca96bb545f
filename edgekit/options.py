"""Options that cross the CLI boundary as frozen dataclasses (no click objects below the CLI)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainOptions:
    out: str = "runs"  # folder for checkpoint, train_log.json and curves PNG
    data: str | None = None  # corpus folder or file; None = the family's default real data
    tokens: int | None = None  # cap on dataset size (tokens / items); None = the preset's default
    max_iters: int | None = None  # optimizer steps at most; None = preset default
    eval_interval: int | None = None  # steps between evaluations; None = preset default
    patience: int | None = None  # evaluations without improvement before early stop; None = preset default
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 1337  # makes a run repeatable (data order, init, sampling)
    resume: bool = False  # continue from <out>/<preset>.last.pt
    device: str = "cpu"  # cpu or cuda
    full_corpus: bool = False  # ignore the preset's token cap and use all the data
    progress: bool = True  # progress bar on stderr
    time_budget: float | None = None  # stop (after a last evaluation) once training has run this many seconds
    extra: tuple = ()  # family-specific key=value pairs


@dataclass(frozen=True)
class ExportOptions:
    out: str | None = None  # output .onnx path; None = checkpoint path with .onnx suffix
    quant: str = "auto"  # auto | fp32 | int8 | int4 (families may add schemes)
    meta: str | None = None  # nanoGPT character-level meta.pkl
    data: str | None = None  # held-out data for quality checks; None = the family's default
    threads: int = 1  # onnxruntime threads for verification and the speed measurements behind quant=auto
    progress: bool = True
    torch_threads_cap: int | None = None  # torch's threads (--threads or OMP_NUM_THREADS); None = all cores
    target: str = "cpu"  # where the file will run: cpu (native onnxruntime) or web (onnxruntime-web, wasm)

    def torch_threads(self) -> int:
        import os

        return self.torch_threads_cap or max(1, os.cpu_count() or 1)
