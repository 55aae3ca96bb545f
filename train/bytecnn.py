"""Train a bytecnn preset on real word frequencies (wordfreq, offline) with early stopping on val Spearman.

    from edgekit.train.bytecnn import train
    summary = train("nano-cnn", TrainOptions(out="runs/nano"))
    summary["test_spearman"], summary["checkpoint"]     # runs/nano/nano-cnn.pt, train_log.json, curves.png

The notes' recipe: Huber loss on the score plus a pairwise (RankNet) loss on the logits, batches
drawn across ICF bands (``stratify``) because the word list is Zipfian, optional character-level
augmentation, early stopping on val Spearman. Beside real words, a share of each batch (``nonwords``)
is pronounceable non-words made from the training split (``wordfreq_data.nonwords``) with target 1.0:
a string absent from the list has frequency zero, the rarest there is. ``max_iters`` counts optimizer
steps; ``tokens`` caps the number of words (the most frequent N). ``--set KEY=VALUE`` overrides any
``TrainDefaults`` field (rank_weight, huber_delta, stratify, augment, nonwords, weight_decay) and
``threads`` (torch intra-op threads).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from edgekit.errors import DataError, UsageError
from edgekit.models.bytecnn import PRESETS, TrainDefaults, build, encode_words, preset_config
from edgekit.train import distributed as dist
from edgekit.train import settings
from edgekit.train import wordfreq_data as wd
from edgekit.train.checkpoint import save_checkpoint
from edgekit.train.common import History, log, plot_curves, seed_everything, write_log
from edgekit.train.fit import Schedule, TrainSpec, fit, session

WARMUP_STEPS = 100
EVAL_BATCH = 8192
NONWORD_POOL = 100_000  # non-words generated once per run (fewer when the training split is smaller)


# --set ranges: key -> (lowest, highest or None)
RANGES = {"rank_weight": (0, None), "rank_margin": (0, 1), "huber_delta": (1e-6, None), "stratify": (0, 2),
          "augment": (0, 1), "weight_decay": (0, None), "nonwords": (0, 0.9), "top_share": (0, 0.5),
          "top_words": (1, None), "stop_stratified": (0, 1), "nonword_pair": (0, None),
          "nonword_len_top": (0, None), "nonword_edit_top": (0, None)}


def _resolve(preset_name: str, opts) -> tuple[TrainDefaults, int | None]:
    """Preset defaults overridden by the CLI options and ``--set KEY=VALUE`` pairs, range-checked."""
    if preset_name not in PRESETS:
        raise UsageError(f"unknown bytecnn preset {preset_name!r}; known: {', '.join(PRESETS)}")
    s = settings.resolve(PRESETS[preset_name], opts, resumable=False)
    cfg = TrainDefaults(**{f.name: s.train[f.name] for f in dataclasses.fields(TrainDefaults)})
    for key, (lo, hi) in RANGES.items():
        v = getattr(cfg, key)
        if v < lo or (hi is not None and v > hi):
            raise UsageError(f"--set {key}={v:g}: must be {'at least ' + format(lo, 'g') if hi is None else f'in [{lo:g}, {hi:g}]'}")
    return cfg, s.threads


def _sampler_cdf(icf: np.ndarray, stratify: float) -> np.ndarray:
    """Cumulative sampling weights: each word weighted by (its band's size) ** -stratify."""
    bands = wd.band_of(icf)
    counts = np.bincount(bands, minlength=wd.BANDS).astype(np.float64)
    w = counts[bands] ** -stratify
    cdf = np.cumsum(w)
    return cdf / cdf[-1]


def _augment(x: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """One character edit (substitute, delete, insert, swap) on ``share`` of the rows of x (B, L) uint8."""
    x = x.copy()
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    for r in np.flatnonzero(rng.random(len(x)) < share):
        row = x[r]
        n = int((row != 0).sum())
        if n < 3:
            continue
        i, op = int(rng.integers(n)), int(rng.integers(4))
        if op == 0:
            row[i] = rng.choice(letters)
        elif op == 1:
            row[i:-1] = row[i + 1:].copy()
            row[-1] = 0
        elif op == 2 and n < len(row):
            row[i + 1:] = row[i:-1].copy()
            row[i] = rng.choice(letters)
        elif op == 3 and i + 1 < n:
            row[i], row[i + 1] = row[i + 1], row[i]
    return x


def _losses(model, xb: torch.Tensor, yb: torch.Tensor, cfg: TrainDefaults) -> tuple[torch.Tensor, torch.Tensor]:
    z = model.logits(xb)  # (B,)
    huber = F.huber_loss(torch.sigmoid(z), yb, delta=cfg.huber_delta)
    dz = z.unsqueeze(1) - z.unsqueeze(0)  # (B, B) score differences
    dy = yb.unsqueeze(1) - yb.unsqueeze(0)  # (B, B) target differences
    sign = torch.sign(dy)  # +1 where word i is rarer than j
    pairs = dy.abs() > max(cfg.rank_margin, 0.0)
    rank = F.softplus(-sign[pairs] * dz[pairs]).mean() if bool(pairs.any()) else z.sum() * 0.0
    return huber, rank


@torch.no_grad()
def predict(model, x: torch.Tensor) -> np.ndarray:
    """Scores for (N, L) byte ids, in eval batches."""
    model.eval()
    out = [model(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)]
    return torch.cat(out).float().cpu().numpy()


def _at_best(history: History, key: str, step: int) -> float | None:
    return history.metrics[key][history.steps.index(step)] if step in history.steps else None


def train(preset_name: str, opts) -> dict:
    """Train ``preset_name`` and write <out>/<preset>.pt, train_log.json and curves.png; return the summary."""
    cfg, threads = _resolve(preset_name, opts)
    with session(opts, threads=threads):
        return _train(preset_name, cfg, opts)


def _load(cfg: TrainDefaults, opts, max_len: int):
    """Words, split, byte-encoded splits (N, L) uint8 and the early-stopping rows of val."""
    data = wd.load_words(opts.data, limit=cfg.tokens)
    split = wd.split_indices(data)
    if min(len(split.train), len(split.val), len(split.test)) < 2:
        raise DataError(f"{data.source}: {len(data)} words leave an empty train, val or test split; give more words")
    x_all = encode_words(data.words, max_len=max_len).astype(np.uint8)  # (N, L)
    # the val words that early stopping ranks: all of them, or fixed Zipf-band samples (as the test report)
    val_samples = wd.stratified_samples(data, wd.Split(split.train, split.test, split.val)) if cfg.stop_stratified else None
    if cfg.stop_stratified and val_samples is None:
        raise UsageError("--set stop_stratified=1 needs wordfreq data (Zipf bands); not a --data file")
    val_at = [np.searchsorted(split.val, idx) for idx in val_samples or []]
    return data, split, x_all, val_at


def _sampler(cfg: TrainDefaults, data, split, x_all: np.ndarray, rng: np.random.Generator, *, seed: int,
             max_len: int, device: str):
    """``draw(generator) -> batch``: Zipf-band-stratified words, top words and non-words, as the recipe says."""
    x_tr, y_tr = x_all[split.train], data.icf[split.train]
    cdf = _sampler_cdf(y_tr, cfg.stratify)
    n_fake = int(round(cfg.batch_size * cfg.nonwords))  # rows of each batch given to non-words
    n_top = int(round(cfg.batch_size * cfg.top_share))  # rows of each batch drawn from the most frequent words
    top_rows = np.flatnonzero(split.train < cfg.top_words)  # positions in x_tr (split.train is sorted)
    if n_top and not len(top_rows):
        raise UsageError(f"--set top_share: no training word among the {cfg.top_words} most frequent")
    if n_fake:
        fake, fake_src = wd.nonwords(data, split, min(NONWORD_POOL, len(split.train)), seed=seed,
                                     max_len=max_len, edit_top=cfg.nonword_edit_top, len_top=cfg.nonword_len_top,
                                     with_sources=True)
        x_fake = encode_words(fake, max_len=max_len).astype(np.uint8)  # (M, L), target 1.0
        x_src = x_all[np.maximum(fake_src, 0)]  # (M, L) the word each edited non-word came from (row 0 for n-gram ones)
        has_src = fake_src >= 0
        log(f"{len(fake):,} non-words from the training split, {n_fake} of every {cfg.batch_size} batch rows")
    to = lambda a: torch.from_numpy(a).to(device)  # noqa: E731

    def draw(_generator) -> dict:  # numpy's rng, not the torch generator: the recipe's data order
        idx = np.searchsorted(cdf, rng.random(cfg.batch_size - n_fake - n_top))
        if n_top:
            idx = np.concatenate([idx, top_rows[rng.integers(len(top_rows), size=n_top)]])
        xb = _augment(x_tr[idx], cfg.augment, rng) if cfg.augment > 0 else x_tr[idx]
        yb, pairs = y_tr[idx], None
        if n_fake:
            fi = rng.integers(len(x_fake), size=n_fake)
            xb = np.concatenate([xb, x_fake[fi]])
            yb = np.concatenate([yb, np.ones(n_fake, np.float32)])
            if cfg.nonword_pair > 0:
                fi = fi[has_src[fi]]
                pairs = (to(x_fake[fi]), to(x_src[fi]))
        return {"x": to(xb), "y": to(yb), "pairs": pairs}

    return draw, n_fake


def _loss(cfg: TrainDefaults):
    def loss(model, batch: dict) -> torch.Tensor:
        huber, rank = _losses(model, batch["x"], batch["y"], cfg)
        loss = huber + cfg.rank_weight * rank
        pairs = batch["pairs"]
        if pairs is not None and len(pairs[0]):  # each edited non-word above the word it came from
            z = model.logits(torch.cat(pairs))
            loss = loss + cfg.nonword_pair * F.softplus(z[len(pairs[0]):] - z[:len(pairs[0])]).mean()
        return loss

    return loss


def _train(preset_name: str, cfg: TrainDefaults, opts) -> dict:
    preset = PRESETS[preset_name]
    out = Path(opts.out)
    if dist.rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(opts.seed)
    rng = np.random.default_rng(opts.seed)
    t0 = time.time()
    model_args = preset_config(preset)
    max_len = model_args["max_len"]
    data, split, x_all, val_at = _load(cfg, opts, max_len)
    x_val, y_val = torch.from_numpy(x_all[split.val]).to(opts.device), data.icf[split.val]
    log(f"bytecnn {preset_name}: {len(data):,} words from {data.source} (train {len(split.train):,}, "
        f"val {len(split.val):,}, test {len(split.test):,}); {cfg.max_iters} steps max")
    draw, n_fake = _sampler(cfg, data, split, x_all, rng, seed=opts.seed, max_len=max_len, device=opts.device)
    model = build(model_args).to(opts.device)

    def evaluate(train_loss: float) -> dict:
        pv = predict(model, x_val)
        rho = float(np.mean([wd.spearman(pv[at], y_val[at]) for at in val_at])) if val_at else wd.spearman(pv, y_val)
        return {"train_loss": train_loss, "val_huber": float(F.huber_loss(
            torch.from_numpy(pv), torch.from_numpy(y_val), delta=cfg.huber_delta)), "val_spearman": rho}

    spec = TrainSpec(model=model, batch=draw, loss=_loss(cfg), evaluate=evaluate, schedule=Schedule(warmup=WARMUP_STEPS),
                     monitor="val_spearman", mode="max", decay=lambda n, p: p.dim() >= 2 and not n.startswith("emb"))
    run = fit(spec, hp={**dataclasses.asdict(cfg), "device": opts.device}, desc=f"train {preset_name}",
              progress_bar=opts.progress, time_budget=opts.time_budget)
    return _finish(preset_name, cfg, opts, out, model, run, data=data, split=split, n_fake=n_fake, t0=t0,
                   model_args=model_args)


def _finish(preset_name: str, cfg: TrainDefaults, opts, out: Path, model, run, *, data, split, n_fake: int,
            t0: float, model_args: dict) -> dict:
    """Test figures (Spearman three ways, the Jabberwocky Protocol), then checkpoint, log and curves on rank 0."""
    max_len, stopper, history = model_args["max_len"], run.stopper, run.history

    def score(words: list[str]) -> np.ndarray:
        return predict(model, torch.from_numpy(encode_words(words, max_len=max_len)).to(opts.device))

    ranks = wd.rank_report(score, data, split)
    test_rho = ranks["all"]
    jab = wd.jabberwocky(score, data, split)
    seconds = time.time() - t0
    config = {"preset": preset_name, **dataclasses.asdict(cfg), "seed": opts.seed, "data": opts.data,
              "device": opts.device, "data_recipe": data.recipe()}
    ckpt_path = out / f"{preset_name}.pt"
    summary = {
        "checkpoint": str(ckpt_path), "preset": preset_name, "params": sum(p.numel() for p in model.parameters()),
        "words": len(data), "train_words": len(split.train), "val_words": len(split.val),
        "test_words": len(split.test), "best_val_spearman": stopper.best, "test_spearman": test_rho,
        "test_spearman_stratified": ranks["stratified"], "test_spearman_top50k": ranks["top50k"],
        "stratified_words_per_band": ranks["stratified_words"], "nonwords_per_batch": n_fake,
        "best_step": stopper.best_step, "steps": run.steps, "stopped_early": run.stopped_early,
        "stopped_by": run.stopped_by, "seconds": round(seconds, 1), "train_seconds": run.seconds, "jabberwocky_passed": jab["passed"],
        "jabberwocky_words_passed": f"{jab['words_passed']}/{jab['words']}",
    }
    if dist.rank():
        return summary
    save_checkpoint(
        ckpt_path, model=model, model_args=model_args, family="bytecnn", tokenizer=None,
        iter_num=stopper.best_step, best_val_loss=_at_best(history, "val_huber", stopper.best_step), config=config,
        best_val_spearman=stopper.best, test_spearman=test_rho, history=history.to_dict())
    write_log(out, {"summary": summary, "config": config, "history": history.to_dict(), "jabberwocky": jab})
    plot_curves(out / "curves.png", history, title=f"bytecnn {preset_name}: val Spearman (best step {stopper.best_step})",
                best_step=stopper.best_step, ylabel="loss / Spearman", keys=("train_loss", "val_huber", "val_spearman"))
    log(f"best val Spearman {stopper.best:.4f} at step {stopper.best_step}; test Spearman {test_rho:.4f} "
        f"(stratified {ranks['stratified'] or float('nan'):.4f}, top-50k {ranks['top50k'] or float('nan'):.4f}); "
        f"Jabberwocky {jab['words_passed']}/{jab['words']} words, {'PASS' if jab['passed'] else 'FAIL'}")
    return summary
