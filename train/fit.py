"""The one training loop of every family: schedule, AdamW groups, evaluation, early stopping, time budget,
resume, data parallelism with rank-0 writes, progress bar and history.

    with session(opts, threads=s.threads) as ctx:                # torchrun's process group, torch threads
        spec = TrainSpec(model=model, batch=draw, loss=loss_fn, evaluate=figures, monitor="val_loss", ...)
        result = fit(spec, hp=s.train, desc="train nano-cnn", progress=opts.progress,
                     time_budget=opts.time_budget)
        result.stopper.best_step, result.history, result.stopped_by    # "max_iters" | "early_stopping" | "time_budget"

A family supplies batches (``batch(generator)``), the loss (``loss(model, batch)``), the held-out figures
(``evaluate(train_loss)``) and hooks (``on_eval``); fit owns everything else. Under torchrun every rank
draws the same global batch and trains on its rows ``rank::world``; gradients are averaged across ranks
(``distributed.average_grads``), so N processes take the steps one process takes. Only rank 0 calls
``on_eval`` (the family's checkpoint writes).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from edgekit.errors import DataError, UsageError
from edgekit.train import distributed as dist
from edgekit.train.common import EarlyStopper, History, log, progress


@dataclass(frozen=True)
class Schedule:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``floor`` x lr at max_iters."""

    warmup: int  # steps of linear warmup
    ramp: int | None = None  # denominator of the warmup ramp: lr * (step + 1) / ramp; None = warmup (nanoGPT: warmup + 1)
    floor: float = 0.1  # the lr at the end, as a share of the peak

    def lr_at(self, step: int, *, lr: float, max_iters: int) -> float:
        if step < self.warmup:
            return lr * (step + 1) / (self.ramp or self.warmup)
        ratio = min(1.0, (step - self.warmup) / max(1, max_iters - self.warmup))
        return lr * self.floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - lr * self.floor)


def decay_matrices(name: str, p: torch.Tensor) -> bool:
    """Weight decay on matrices (and conv kernels), not on biases and norms."""
    return p.dim() >= 2


@dataclass
class TrainSpec:
    """What a family gives ``fit``: its model, batches, loss, figures and hooks."""

    model: torch.nn.Module
    batch: Callable[[torch.Generator], Any]  # one global training batch (tensors, or a tuple/dict of them)
    loss: Callable[[torch.nn.Module, Any], torch.Tensor]  # the scalar loss of (this rank's rows of) a batch
    evaluate: Callable[[float], dict]  # held-out figures, given the mean training loss since the last evaluation
    schedule: Schedule
    monitor: str = "val_loss"  # the figure early stopping watches
    mode: str = "min"  # "min" for losses, "max" for correlations
    batch_seed: int = 0  # seeds the generator handed to ``batch``
    decay: Callable[[str, torch.Tensor], bool] = decay_matrices  # (name, parameter) -> weight decay on it
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    grad_clip: float | None = None  # max gradient norm; None = no clipping
    eval_at_start: bool = False  # evaluate the untrained model too (step 0)
    autocast: bool = False  # bfloat16 autocast on CUDA devices that support it
    on_eval: Callable[["Run", int, dict, bool], None] | None = None  # (run, step, figures, improved), rank 0 only


@dataclass
class Run:
    """The loop's state: what a resume needs and what the family reads after training."""

    optimizer: torch.optim.Optimizer
    stopper: EarlyStopper
    history: History = field(default_factory=History)
    generator: torch.Generator = field(default_factory=torch.Generator)
    start: int = 0  # the step this process started from (0, or the resumed checkpoint's step)
    steps: int = 0  # the step reached
    seconds: float = 0.0  # wall time of the loop
    stopped_by: str = "max_iters"  # "max_iters" | "early_stopping" | "time_budget"

    @property
    def stopped_early(self) -> bool:
        return self.stopped_by == "early_stopping"

    def state(self) -> dict:
        """The loop's state for a last checkpoint (``fit(..., resume=state)`` continues from it)."""
        return {"optimizer": self.optimizer.state_dict(), "early_stopping": self.stopper.state(),
                "history": self.history.to_dict(),
                "rng": {"batch": self.generator.get_state(), "torch": torch.get_rng_state()}}

    def load(self, state: dict, step: int) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.stopper.load(state["early_stopping"])
        self.history = History.from_dict(state["history"])
        self.generator.set_state(state["rng"]["batch"])
        torch.set_rng_state(state["rng"]["torch"])
        self.start = self.steps = step


@contextlib.contextmanager
def session(opts, *, threads: int | None = None):
    """torchrun's process group (if launched by it) and ``threads`` torch threads for the run's duration."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield dist.setup(opts.device)
    finally:
        dist.teardown()
        torch.set_num_threads(before)


def optimizer(model: torch.nn.Module, spec: TrainSpec, *, lr: float, weight_decay: float, device: str):
    """AdamW with two groups: decay where ``spec.decay`` says so, none elsewhere."""
    named = list(model.named_parameters())
    decay = [p for n, p in named if spec.decay(n, p)]
    rest = [p for n, p in named if not spec.decay(n, p)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=spec.betas, fused=device.startswith("cuda"))


def _shard(batch):
    """This rank's rows (``rank::world``) of every tensor in a batch (a tensor, tuple, list or dict)."""
    if isinstance(batch, torch.Tensor):
        return dist.shard(batch)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_shard(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _shard(v) for k, v in batch.items()}
    return batch


def _step(spec: TrainSpec, run: Run, step: int, hp: dict, max_iters: int, autocast) -> float:
    """One optimizer step at ``step`` (0-based); returns the loss."""
    for group in run.optimizer.param_groups:
        group["lr"] = spec.schedule.lr_at(step, lr=hp["lr"], max_iters=max_iters)
    spec.model.train()
    batch = _shard(spec.batch(run.generator))
    with autocast:
        loss = spec.loss(spec.model, batch)
    # a non-finite loss is not raised here: this rank's rows may diverge while others do not, and a rank that
    # left now would leave the others waiting in average_grads; the ranks agree on it after the step (fit)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    dist.average_grads(spec.model)
    if spec.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(spec.model.parameters(), spec.grad_clip)
    run.optimizer.step()
    return loss.item()


def _evaluate(spec: TrainSpec, run: Run, step: int, losses: list[float], best: list) -> bool:
    """Evaluate at ``step``: history, early stopping, best weights, the family's hook. True = stop."""
    spec.model.eval()
    with torch.no_grad():
        figures = spec.evaluate(sum(losses) / len(losses) if losses else float("nan"))
    figures = {**figures, **dist.mean_dict({k: v for k, v in figures.items() if isinstance(v, float)})}
    run.history.add(step, **figures)
    improved = run.stopper.update(figures[spec.monitor], step)
    if improved:
        best[0] = {k: v.detach().clone() for k, v in spec.model.state_dict().items()}
    if spec.on_eval is not None and dist.rank() == 0:
        spec.on_eval(run, step, figures, improved)
    return run.stopper.should_stop


def fit(spec: TrainSpec, *, hp: dict, desc: str, progress_bar: bool = True, time_budget: float | None = None,
        resume: dict | None = None, resume_step: int = 0, clock: Callable[[], float] = time.monotonic) -> Run:
    """Train until ``hp['max_iters']``, early stopping on ``spec.monitor`` or the time budget (seconds of this
    loop, read from ``clock``); evaluates every ``hp['eval_interval']`` steps and at the end. The best weights
    end up loaded. Under torchrun the ranks agree on every stop (``distributed.agree``) after each step."""
    if hp["batch_size"] % dist.world():
        raise UsageError(f"--batch-size {hp['batch_size']} must be divisible by the {dist.world()} processes")
    model, max_iters = spec.model, hp["max_iters"]
    dist.sync_params(model)
    run = Run(optimizer(model, spec, lr=hp["lr"], weight_decay=hp["weight_decay"], device=hp["device"]),
              EarlyStopper(patience=hp["patience"], mode=spec.mode),
              generator=torch.Generator().manual_seed(spec.batch_seed))
    if resume is not None:
        run.load(resume, resume_step)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if spec.autocast and hp["device"].startswith("cuda")
                and torch.cuda.is_bf16_supported() else contextlib.nullcontext())
    best, losses, main = [None], [], dist.rank() == 0
    t0 = clock()
    stop = spec.eval_at_start and resume is None and _evaluate(spec, run, run.steps, losses, best)
    with progress(max_iters, desc=desc, enabled=progress_bar and main, initial=run.steps) as bar:
        while not stop and run.steps < max_iters:
            losses.append(_step(spec, run, run.steps, hp, max_iters, autocast))
            run.steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            evaluated = early = False
            if run.steps % hp["eval_interval"] == 0 or run.steps == max_iters:  # the same step on every rank
                early, evaluated = _evaluate(spec, run, run.steps, losses, best), True
            # every reason to stop, agreed in one collective: each rank's own clock and loss may differ
            why = dist.agree({"diverged": not math.isfinite(losses[-1]), "early_stopping": early,
                              "max_iters": run.steps >= max_iters,
                              "time_budget": time_budget is not None and clock() - t0 > time_budget})
            if why["diverged"]:
                raise DataError(f"training diverged at step {run.steps - 1} (loss {losses[-1]} on this process, "
                                "non-finite on at least one); lower --lr")
            if why["time_budget"] and not evaluated:  # a last evaluation, on every rank together
                early, evaluated = _evaluate(spec, run, run.steps, losses, best), True
            if evaluated:
                losses = []
                bar.set_postfix({spec.monitor: f"{run.history.metrics[spec.monitor][-1]:.4f}"}, refresh=False)
            if why["early_stopping"] or early:
                run.stopped_by, stop = "early_stopping", True
            elif why["time_budget"]:
                run.stopped_by, stop = "time_budget", True
    run.seconds = clock() - t0
    if main and run.stopped_by == "early_stopping":
        log(f"[edgekit] early stop at step {run.steps}: {spec.monitor} has not improved for {hp['patience']} "
            f"evaluations since step {run.stopper.best_step} ({run.stopper.best:.4f})")
    if main and run.stopped_by == "time_budget":
        log(f"[edgekit] time budget of {time_budget:g}s spent: stopped at step {run.steps} of {max_iters} "
            f"after {run.seconds:.1f}s")
    if best[0] is not None:  # None only when every evaluation was NaN (or a resumed run improved on nothing)
        model.load_state_dict(best[0])
    model.eval()
    return run
