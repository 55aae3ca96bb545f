"""Training helpers shared by every family: seeding, early stopping, progress, logs and curves.

    seed_everything(1337)
    stop = EarlyStopper(patience=5, mode="min")
    if stop.update(val_loss, step): save_best()
    if stop.should_stop: break
    write_log(out, log_dict); plot_curves(out / "curves.png", history, title="phase3")
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgekit.fileio import atomic_write_text


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class EarlyStopper:
    """Tracks the best metric; ``should_stop`` after ``patience`` evaluations without improvement."""

    patience: int  # evaluations without improvement before stopping
    mode: str = "min"  # "min" for losses, "max" for correlations
    min_delta: float = 0.0  # improvement smaller than this does not count
    best: float | None = None
    best_step: int = -1
    bad_evals: int = 0

    def update(self, value: float, step: int) -> bool:
        """Record an evaluation; True when it is a new best."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            self.bad_evals += 1
            return False
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.best_step, self.bad_evals = float(value), int(step), 0
        else:
            self.bad_evals += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.bad_evals >= self.patience

    def state(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load(self, state: dict) -> None:
        self.best, self.best_step, self.bad_evals = state["best"], state["best_step"], state["bad_evals"]


def progress(total: int, *, desc: str, enabled: bool = True, initial: int = 0):
    """A tqdm bar on stderr (disabled when not wanted or stderr is not a terminal and CI is set)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, leave=False, mininterval=0.5)


def log(msg: str) -> None:
    """Progress and log lines go to stderr; stdout is for results."""
    print(msg, file=sys.stderr, flush=True)


def write_log(out: str | os.PathLike, data: dict, name: str = "train_log.json") -> Path:
    path = Path(out) / name
    atomic_write_text(path, json.dumps(data, indent=2, default=float))
    return path


@dataclass
class History:
    """Evaluation history: step -> named metrics, for logs and curves."""

    steps: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)

    def add(self, step: int, **values: float) -> None:
        self.steps.append(int(step))
        for k, v in values.items():
            self.metrics.setdefault(k, []).append(float(v))

    def to_dict(self) -> dict:
        return {"steps": self.steps, **self.metrics}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        h = cls(steps=list(d.get("steps", [])))
        h.metrics = {k: list(v) for k, v in d.items() if k != "steps"}
        return h


def plot_curves(path: str | os.PathLike, history: History, *, title: str, best_step: int | None = None,
                ylabel: str = "loss", keys: tuple[str, ...] | None = None) -> Path:
    """Training curves PNG (matplotlib, Agg) with the best step marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for k in keys or tuple(history.metrics):
        if k in history.metrics:
            ax.plot(history.steps, history.metrics[k], marker=".", label=k.replace("_", " "))
    if best_step is not None and best_step >= 0:
        ax.axvline(best_step, color="grey", linestyle="--", linewidth=1, label=f"best (step {best_step})")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
