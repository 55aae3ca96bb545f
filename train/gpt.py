"""Train a GPT preset on real code with evaluation, early stopping, resume, logs and curves.

    edgekit train phase3 --out runs/p3              # -> runs/p3/phase3.pt (best val), train_log.json, curves
    edgekit train phase3 --out runs/p3 --resume     # continue a killed run from runs/p3/phase3.last.pt
    torchrun --nproc_per_node=2 -m edgekit.train phase2 --out runs/p2   # DistributedDataParallel

The research notes' lessons are features: train and val loss every ``eval_interval`` steps with the
gap printed; early stopping keeps the best-val checkpoint; a data-to-parameter report warns when the
model is far too large for its data.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import torch

from edgekit.errors import CheckpointError, UsageError
from edgekit.models.gpt import GPT, PRESETS
from edgekit.options import TrainOptions
from edgekit.runtime.tokenizer import from_spec
from edgekit.train import distributed as dist
from edgekit.train import settings
from edgekit.train.checkpoint import load_checkpoint, save_checkpoint
from edgekit.train.common import log, plot_curves, seed_everything, write_log
from edgekit.train.data import build_corpus, read_split_texts
from edgekit.train.fit import Schedule, TrainSpec, fit, session

PARAMS_PER_TOKEN_WARN = 100  # the notes' phases 0/1 failed at 33,328 and 1,815 parameters per token


def _tokenizer_spec(preset, opts: TrainOptions) -> dict:
    if preset.tokenizer == "gpt2":
        return {"kind": "gpt2"}
    if preset.tokenizer.startswith("bpe:"):
        from edgekit.train.bpe import bpe_spec, train_bpe

        size = int(preset.tokenizer.split(":", 1)[1])
        train_texts, _, _ = read_split_texts(opts.data)
        return bpe_spec(train_bpe(train_texts, vocab_size=size), name=f"edgekit-bpe-{size}")
    raise UsageError(f"preset {preset.name} has unknown tokenizer {preset.tokenizer!r}")


@torch.no_grad()
def estimate_loss(model, corpus, *, batch_size: int, block_size: int, eval_iters: int, seed: int,
                  autocast) -> dict[str, float]:
    """Mean loss over the same ``eval_iters`` batches every time (fixed generator), per split."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        g = torch.Generator().manual_seed(seed + (1 if split == "train" else 2))
        losses = []
        for _ in range(eval_iters):
            x, y = corpus.batch(split, batch_size=batch_size, block_size=block_size, generator=g)
            with autocast:
                _, loss = model(x.to(dist.device()), y.to(dist.device()))
            losses.append(loss.item())
        out[split] = sum(losses) / len(losses)
    model.train()
    return out


def _resolve(preset, opts: TrainOptions) -> dict:
    hp = settings.resolve(preset, opts).train
    hp["warmup"] = min(100, hp["max_iters"] // 10)
    return hp


def train(preset_name: str, opts: TrainOptions) -> dict:
    """Train ``preset_name``; returns a summary (checkpoint path, losses, tokens, timing)."""
    preset = PRESETS[preset_name]
    threads = settings.resolve(preset, opts).threads if not opts.resume else None
    with session(opts, threads=threads) as ctx:
        return _train(preset, opts, Path(opts.out), ctx)


def _start(preset, opts: TrainOptions, out: Path, ctx):
    """Settings (fresh or from the last checkpoint), tokenizer and corpus; the output folder once they are good."""
    last_path = out / f"{preset.name}.last.pt"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder")
    resume = None
    if opts.resume:
        if not last_path.exists():
            raise CheckpointError(f"--resume: no {last_path} to continue from; run without --resume first")
        resume = load_checkpoint(last_path)
        hp, tok_spec = dict(resume.config), resume.tokenizer
    else:
        hp = _resolve(preset, opts)
        tok_spec = _tokenizer_spec(preset, opts) if ctx.is_main or preset.tokenizer == "gpt2" else None
        tok_spec = dist.broadcast_object(tok_spec)
    seed_everything(hp["seed"])
    tok = from_spec(tok_spec)
    corpus = build_corpus(tok, data=hp["data"], tokens=hp["tokens"], min_tokens=preset.model.block_size + 2)
    if ctx.is_main:  # only now, with the data known good, does the run leave anything on disk
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise UsageError(f"output folder {str(out)!r} is not writable")
    return hp, tok, tok_spec, corpus, resume


def _report(preset, corpus, n_params: int, main: bool) -> dict:
    """The data-to-parameter report (logged on rank 0, kept in the best checkpoint)."""
    tokens_per_param = len(corpus.train) / n_params
    report = {
        "preset": preset.name, "params": n_params, "train_tokens": int(len(corpus.train)),
        "val_tokens": int(len(corpus.val)), "tokens_per_param": tokens_per_param,
        "params_per_token": 1 / tokens_per_param, "source": corpus.source,
    }
    if main:
        log(f"[edgekit] {preset.name}: {n_params:,} parameters, {len(corpus.train):,} train / {len(corpus.val):,} val "
            f"tokens from {corpus.source}")
        log(f"[edgekit] data-to-parameter ratio: {tokens_per_param:.4f} tokens per parameter "
            f"({1 / tokens_per_param:,.3g} parameters per token)")
        if 1 / tokens_per_param > PARAMS_PER_TOKEN_WARN:
            log(f"[edgekit] WARNING: {1 / tokens_per_param:,.0f} parameters per training token is far off: the "
                f"research notes' phases 0 and 1 memorised at 33,328 and 1,815; use more data (a larger --tokens, or none) "
                f"or a smaller preset")
    return report


def _train(preset, opts: TrainOptions, out: Path, ctx) -> dict:
    best_path, last_path = out / f"{preset.name}.pt", out / f"{preset.name}.last.pt"
    hp, tok, tok_spec, corpus, resume = _start(preset, opts, out, ctx)
    cfg = dataclasses.replace(preset.model, vocab_size=max(preset.model.vocab_size, tok.n_vocab))
    model = GPT(cfg)
    report = _report(preset, corpus, model.num_params(), ctx.is_main)
    if resume is not None:
        model.load_state_dict(resume.state_dict)
    model.to(dist.device())
    block, bs = preset.model.block_size, hp["batch_size"]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if hp["device"].startswith("cuda")
                and torch.cuda.is_bf16_supported() else contextlib.nullcontext())

    def evaluate(_train_loss: float) -> dict:
        losses = estimate_loss(model, corpus, batch_size=bs, block_size=block, eval_iters=hp["eval_iters"],
                               seed=hp["seed"], autocast=autocast)
        return {"train_loss": losses["train"], "val_loss": losses["val"], "gap": losses["val"] - losses["train"]}

    def on_eval(run, step: int, figs: dict, improved: bool) -> None:
        log(f"step {step:>5}: train loss {figs['train_loss']:.4f}, val loss {figs['val_loss']:.4f}, "
            f"gap {figs['gap']:+.4f}{'  *best' if improved else ''}")
        state = dict(model=model, model_args=cfg.to_dict(), family="gpt", tokenizer=tok_spec,
                     iter_num=step, best_val_loss=run.stopper.best, config=hp)
        if improved:
            save_checkpoint(best_path, **state, train_report=report)
        save_checkpoint(last_path, **state, **run.state())

    # One generator draws the global batch on every rank; each rank trains on its own rows of it, so
    # N processes see exactly the batches one process would, and resume works across world sizes.
    spec = TrainSpec(
        model=model, batch=lambda g: corpus.batch("train", batch_size=bs, block_size=block, generator=g),
        loss=lambda m, b: m(b[0].to(dist.device()), b[1].to(dist.device()))[1], evaluate=evaluate,
        schedule=Schedule(warmup=hp["warmup"], ramp=hp["warmup"] + 1), batch_seed=hp["seed"] + 1000,
        betas=(0.9, 0.95), grad_clip=1.0, eval_at_start=True, autocast=True, on_eval=on_eval)
    run = fit(spec, hp=hp, desc=preset.name, progress_bar=opts.progress, time_budget=opts.time_budget,
              resume=resume.extra if resume is not None else None, resume_step=resume.iter_num if resume else 0)
    history, stopper, wall = run.history, run.stopper, run.seconds
    summary = {
        **report, "checkpoint": str(best_path), "last_checkpoint": str(last_path), "steps": run.steps,
        "best_step": stopper.best_step, "best_val_loss": stopper.best,
        "final_train_loss": history.metrics["train_loss"][-1], "final_val_loss": history.metrics["val_loss"][-1],
        "stopped_early": run.stopped_early, "stopped_by": run.stopped_by, "wall_seconds": wall, "train_seconds": wall,
        "world_size": ctx.world_size,
        # bs is the global batch (each rank trains on its bs / world rows): no factor of world_size
        "tokens_seen": (run.steps - run.start) * bs * block,
        "train_tokens_per_s": (run.steps - run.start) * bs * block / max(wall, 1e-9), "config": hp,
    }
    if ctx.is_main:
        write_log(out, {**summary, "history": history.to_dict()})
        plot_curves(out / f"{preset.name}_curves.png", history, title=f"{preset.name}: train/val loss",
                    best_step=stopper.best_step, keys=("train_loss", "val_loss"))
        log(f"[edgekit] done in {wall:.0f}s: best val loss {stopper.best:.4f} at step {stopper.best_step}; "
            f"wrote {best_path}")
    return summary
