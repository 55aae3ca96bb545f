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
import math
import os
import time
from pathlib import Path

import torch

from edgekit.errors import CheckpointError, DataError, UsageError
from edgekit.models.gpt import GPT, PRESETS
from edgekit.options import TrainOptions
from edgekit.runtime.tokenizer import from_spec
from edgekit.train import distributed as dist
from edgekit.train.checkpoint import load_checkpoint, save_checkpoint
from edgekit.train.common import EarlyStopper, History, log, plot_curves, progress, seed_everything, write_log
from edgekit.train.data import build_corpus, read_split_texts

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


def _lr_at(it: int, *, lr: float, warmup: int, max_iters: int) -> float:
    """Linear warmup, then cosine decay to lr/10 (nanoGPT's schedule)."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    ratio = min(1.0, (it - warmup) / max(1, max_iters - warmup))
    return lr / 10 + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - lr / 10)


def _optimizer(model: GPT, *, lr: float, weight_decay: float, device: str) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.startswith("cuda"))


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
    d = preset.train
    hp = {
        "max_iters": opts.max_iters or d.max_iters,
        "batch_size": opts.batch_size or d.batch_size,
        "lr": opts.lr or d.lr,
        "eval_interval": opts.eval_interval or d.eval_interval,
        "eval_iters": d.eval_iters,
        "patience": opts.patience or d.patience,
        "tokens": None if opts.full_corpus else (opts.tokens or d.tokens),
        "weight_decay": d.weight_decay,
        "seed": opts.seed,
        "data": opts.data,
        "device": opts.device,
    }
    hp["warmup"] = min(100, hp["max_iters"] // 10)
    return hp


def train(preset_name: str, opts: TrainOptions) -> dict:
    """Train ``preset_name``; returns a summary (checkpoint path, losses, tokens, timing)."""
    preset = PRESETS[preset_name]
    out = Path(opts.out)
    ctx = dist.setup(opts.device)
    try:
        return _train(preset, opts, out, ctx)
    finally:
        dist.teardown()


def _train(preset, opts: TrainOptions, out: Path, ctx) -> dict:
    best_path, last_path = out / f"{preset.name}.pt", out / f"{preset.name}.last.pt"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder")
    resume = None
    if opts.resume:
        if not last_path.exists():
            raise CheckpointError(f"--resume: no {last_path} to continue from; run without --resume first")
        resume = load_checkpoint(last_path)
        hp = dict(resume.config)
        tok_spec = resume.tokenizer
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
    cfg = dataclasses.replace(preset.model, vocab_size=max(preset.model.vocab_size, tok.n_vocab))
    model = GPT(cfg)
    n_params = model.num_params()
    if resume is not None:
        model.load_state_dict(resume.state_dict)
    model.to(dist.device())
    optimizer = _optimizer(model, lr=hp["lr"], weight_decay=hp["weight_decay"], device=hp["device"])
    stopper = EarlyStopper(patience=hp["patience"], mode="min")
    history = History()
    # One generator draws the global batch on every rank; each rank trains on its own slice of it, so
    # N processes see exactly the batches one process would, and resume works across world sizes.
    gen = torch.Generator().manual_seed(hp["seed"] + 1000)
    if hp["batch_size"] % ctx.world_size:
        raise UsageError(f"--batch-size {hp['batch_size']} must be divisible by the {ctx.world_size} processes")
    start = 0
    if resume is not None:
        optimizer.load_state_dict(resume.extra["optimizer"])
        stopper.load(resume.extra["early_stopping"])
        history = History.from_dict(resume.extra["history"])
        gen.set_state(resume.extra["rng"]["batch"])
        torch.set_rng_state(resume.extra["rng"]["torch"])
        start = resume.iter_num
    tokens_per_param = len(corpus.train) / n_params
    report = {
        "preset": preset.name, "params": n_params, "train_tokens": int(len(corpus.train)),
        "val_tokens": int(len(corpus.val)), "tokens_per_param": tokens_per_param,
        "params_per_token": 1 / tokens_per_param, "source": corpus.source,
    }
    if ctx.is_main:
        log(f"[edgekit] {preset.name}: {n_params:,} parameters, {len(corpus.train):,} train / {len(corpus.val):,} val "
            f"tokens from {corpus.source}")
        log(f"[edgekit] data-to-parameter ratio: {tokens_per_param:.4f} tokens per parameter "
            f"({1 / tokens_per_param:,.3g} parameters per token)")
        if 1 / tokens_per_param > PARAMS_PER_TOKEN_WARN:
            log(f"[edgekit] WARNING: {1 / tokens_per_param:,.0f} parameters per training token is far off: the "
                f"research notes' phases 0 and 1 memorised at 33,328 and 1,815; use more data (a larger --tokens, or none) "
                f"or a smaller preset")
    raw_model = model
    if ctx.world_size > 1:
        model = dist.wrap(model)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if hp["device"].startswith("cuda")
                and torch.cuda.is_bf16_supported() else contextlib.nullcontext())
    block, bs, max_iters = preset.model.block_size, hp["batch_size"], hp["max_iters"]
    t0 = time.time()
    bar = progress(max_iters, desc=preset.name, enabled=opts.progress and ctx.is_main, initial=start)
    it, stopped_early = start, False
    model.train()
    while True:
        if (it % hp["eval_interval"] == 0 or it == max_iters) and not (resume is not None and it == start):
            losses = estimate_loss(raw_model, corpus, batch_size=bs, block_size=block, eval_iters=hp["eval_iters"],
                                   seed=hp["seed"], autocast=autocast)
            losses = dist.mean_dict(losses)
            improved = stopper.update(losses["val"], it)
            history.add(it, train_loss=losses["train"], val_loss=losses["val"], gap=losses["val"] - losses["train"])
            if ctx.is_main:
                bar.clear()
                log(f"step {it:>5}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                    f"gap {losses['val'] - losses['train']:+.4f}{'  *best' if improved else ''}")
                state = dict(model=raw_model, model_args=cfg.to_dict(), family="gpt", tokenizer=tok_spec,
                             iter_num=it, best_val_loss=stopper.best, config=hp)
                if improved:
                    save_checkpoint(best_path, **state, train_report=report)
                save_checkpoint(last_path, **state, optimizer=optimizer.state_dict(),
                                early_stopping=stopper.state(), history=history.to_dict(),
                                rng={"batch": gen.get_state(), "torch": torch.get_rng_state()})
            if stopper.should_stop:
                stopped_early = True
                if ctx.is_main:
                    log(f"[edgekit] early stop at step {it}: val loss has not improved for {hp['patience']} "
                        f"evaluations since step {stopper.best_step} ({stopper.best:.4f})")
                break
        if it >= max_iters:
            break
        if opts.time_budget is not None and time.time() - t0 > opts.time_budget and it % hp["eval_interval"]:
            max_iters = it  # out of time: evaluate once more at this step, then stop
            continue
        lr = _lr_at(it, lr=hp["lr"], warmup=hp["warmup"], max_iters=max_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = corpus.batch("train", batch_size=bs, block_size=block, generator=gen)
        x, y = dist.shard(x), dist.shard(y)  # (B / world, T) this rank's slice of the global batch
        with autocast:
            _, loss = model(x.to(dist.device()), y.to(dist.device()))
        if not torch.isfinite(loss):
            raise DataError(f"training diverged at step {it} (loss {loss.item()}); lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        it += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    wall = time.time() - t0
    summary = {
        **report, "checkpoint": str(best_path), "last_checkpoint": str(last_path), "steps": it,
        "best_step": stopper.best_step, "best_val_loss": stopper.best,
        "final_train_loss": history.metrics["train_loss"][-1], "final_val_loss": history.metrics["val_loss"][-1],
        "stopped_early": stopped_early, "wall_seconds": wall, "world_size": ctx.world_size,
        # bs is the global batch (each rank trains on its bs / world slice): no factor of world_size
        "tokens_seen": (it - start) * bs * block,
        "train_tokens_per_s": (it - start) * bs * block / max(wall, 1e-9), "config": hp,
    }
    if ctx.is_main:
        write_log(out, {**summary, "history": history.to_dict()})
        plot_curves(out / f"{preset.name}_curves.png", history, title=f"{preset.name}: train/val loss",
                    best_step=stopper.best_step, keys=("train_loss", "val_loss"))
        log(f"[edgekit] done in {wall:.0f}s: best val loss {stopper.best:.4f} at step {stopper.best_step}; "
            f"wrote {best_path}")
    return summary
