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
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from edgekit.errors import DataError, UsageError
from edgekit.models.bytecnn import PRESETS, TrainDefaults, build, encode_words, preset_config
from edgekit.train import wordfreq_data as wd
from edgekit.train.checkpoint import save_checkpoint
from edgekit.train.common import EarlyStopper, History, log, plot_curves, progress, seed_everything, write_log

WARMUP_STEPS = 100
EVAL_BATCH = 8192
NONWORD_POOL = 100_000  # non-words generated once per run (fewer when the training split is smaller)


def _resolve(preset_name: str, opts) -> tuple[TrainDefaults, int | None]:
    """Preset defaults overridden by the CLI options and ``--set KEY=VALUE`` pairs."""
    if preset_name not in PRESETS:
        raise UsageError(f"unknown bytecnn preset {preset_name!r}; known: {', '.join(PRESETS)}")
    if opts.resume:
        raise UsageError("bytecnn training takes minutes and does not resume; run it again without --resume")
    d = PRESETS[preset_name].train
    over = {k: v for k, v in (("max_iters", opts.max_iters), ("batch_size", opts.batch_size), ("lr", opts.lr),
                              ("eval_interval", opts.eval_interval), ("patience", opts.patience),
                              ("tokens", opts.tokens)) if v is not None}
    if opts.full_corpus:
        over["tokens"] = None
    fields = {f.name: f.type for f in dataclasses.fields(TrainDefaults)}
    threads = None
    for kv in opts.extra:
        key, _, raw = kv.partition("=")
        if key == "threads":
            threads = _number(key, raw, int)
            continue
        if key in over:
            raise UsageError(f"--set {key}: given twice (also as an option or an earlier --set); give it once")
        if key not in fields:
            raise UsageError(f"--set {key}: not a bytecnn training option; valid: threads, "
                             + ", ".join(k for k in fields if k not in ("max_iters", "batch_size", "lr")))
        over[key] = _number(key, raw, int if str(fields[key]).startswith("int") else float)
    cfg = dataclasses.replace(d, **over)
    for key, lo, hi in (("rank_weight", 0, None), ("rank_margin", 0, 1), ("huber_delta", 1e-6, None),
                        ("stratify", 0, 2), ("augment", 0, 1), ("weight_decay", 0, None), ("nonwords", 0, 0.9), ("top_share", 0, 0.5), ("top_words", 1, None),
                        ("stop_stratified", 0, 1), ("nonword_pair", 0, None),
                        ("nonword_len_top", 0, None), ("nonword_edit_top", 0, None)):
        v = getattr(cfg, key)
        if v < lo or (hi is not None and v > hi):
            raise UsageError(f"--set {key}={v:g}: must be {'at least ' + format(lo, 'g') if hi is None else f'in [{lo:g}, {hi:g}]'}")
    if threads is not None and threads < 1:
        raise UsageError(f"--set threads={threads}: must be at least 1")
    return cfg, threads


def _number(key: str, raw: str, kind):
    try:
        return kind(raw)
    except ValueError:
        raise UsageError(f"--set {key}={raw!r}: expected {'an integer' if kind is int else 'a number'}") from None


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


def _lr_at(step: int, cfg: TrainDefaults) -> float:
    if step < WARMUP_STEPS:
        return cfg.lr * (step + 1) / WARMUP_STEPS
    t = min(1.0, (step - WARMUP_STEPS) / max(1, cfg.max_iters - WARMUP_STEPS))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train(preset_name: str, opts) -> dict:
    """Train ``preset_name`` and write <out>/<preset>.pt, train_log.json and curves.png; return the summary."""
    cfg, threads = _resolve(preset_name, opts)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(preset_name, cfg, opts)
    finally:
        torch.set_num_threads(before)


def _train(preset_name: str, cfg: TrainDefaults, opts) -> dict:
    preset = PRESETS[preset_name]
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(opts.seed)
    rng = np.random.default_rng(opts.seed)
    t0 = time.time()

    data = wd.load_words(opts.data, limit=cfg.tokens)
    split = wd.split_indices(data)
    if min(len(split.train), len(split.val), len(split.test)) < 2:
        raise DataError(f"{data.source}: {len(data)} words leave an empty train, val or test split; give more words")
    model_args = preset_config(preset)
    max_len = model_args["max_len"]
    x_all = encode_words(data.words, max_len=max_len).astype(np.uint8)  # (N, L)
    y_all = data.icf
    x_val, y_val = torch.from_numpy(x_all[split.val]).to(opts.device), y_all[split.val]
    x_tr, y_tr = x_all[split.train], y_all[split.train]
    cdf = _sampler_cdf(y_tr, cfg.stratify)
    log(f"bytecnn {preset_name}: {len(data):,} words from {data.source} (train {len(split.train):,}, "
        f"val {len(split.val):,}, test {len(split.test):,}); {cfg.max_iters} steps max")
    n_fake = int(round(cfg.batch_size * cfg.nonwords))  # rows of each batch given to non-words
    n_top = int(round(cfg.batch_size * cfg.top_share))  # rows of each batch drawn from the most frequent words
    top_rows = np.flatnonzero(split.train < cfg.top_words)  # positions in x_tr (split.train is sorted)
    if n_top and not len(top_rows):
        raise UsageError(f"--set top_share: no training word among the {cfg.top_words} most frequent")
    if n_fake:
        fake, fake_src = wd.nonwords(data, split, min(NONWORD_POOL, len(split.train)), seed=opts.seed,
                                     max_len=max_len, edit_top=cfg.nonword_edit_top, len_top=cfg.nonword_len_top,
                                     with_sources=True)
        x_fake = encode_words(fake, max_len=max_len).astype(np.uint8)  # (M, L), target 1.0
        x_src = x_all[np.maximum(fake_src, 0)]  # (M, L) the word each edited non-word came from (row 0 for n-gram ones)
        has_src = fake_src >= 0
        log(f"{len(fake):,} non-words from the training split, {n_fake} of every {cfg.batch_size} batch rows")

    # the val words that early stopping ranks: all of them, or fixed Zipf-band samples (as the test report)
    val_samples = wd.stratified_samples(data, wd.Split(split.train, split.test, split.val)) if cfg.stop_stratified else None
    if cfg.stop_stratified and val_samples is None:
        raise UsageError("--set stop_stratified=1 needs wordfreq data (Zipf bands); not a --data file")
    val_at = [np.searchsorted(split.val, idx) for idx in val_samples or []]

    model = build(model_args).to(opts.device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("emb")]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.startswith("emb"))]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                               {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
    stopper = EarlyStopper(patience=cfg.patience, mode="max")
    history = History()
    best_state, step, run_loss = None, 0, []
    bar = progress(cfg.max_iters, desc=f"train {preset_name}", enabled=opts.progress)
    for step in range(1, cfg.max_iters + 1):
        model.train()
        idx = np.searchsorted(cdf, rng.random(cfg.batch_size - n_fake - n_top))
        if n_top:
            idx = np.concatenate([idx, top_rows[rng.integers(len(top_rows), size=n_top)]])
        xb = _augment(x_tr[idx], cfg.augment, rng) if cfg.augment > 0 else x_tr[idx]
        yb = y_tr[idx]
        pair_rows = None
        if n_fake:
            fi = rng.integers(len(x_fake), size=n_fake)
            xb = np.concatenate([xb, x_fake[fi]])
            yb = np.concatenate([yb, np.ones(n_fake, np.float32)])
            if cfg.nonword_pair > 0:
                fi = fi[has_src[fi]]
                pair_rows = (torch.from_numpy(x_fake[fi]).to(opts.device), torch.from_numpy(x_src[fi]).to(opts.device))
        xb = torch.from_numpy(xb).to(opts.device)
        yb = torch.from_numpy(yb).to(opts.device)
        for g in optim.param_groups:
            g["lr"] = _lr_at(step - 1, cfg)
        huber, rank = _losses(model, xb, yb, cfg)
        loss = huber + cfg.rank_weight * rank
        if pair_rows is not None and len(pair_rows[0]):  # each edited non-word above the word it came from
            z = model.logits(torch.cat(pair_rows))
            loss = loss + cfg.nonword_pair * F.softplus(z[len(pair_rows[0]):] - z[:len(pair_rows[0])]).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        run_loss.append(float(loss.detach()))
        bar.update(1)
        if step % cfg.eval_interval == 0 or step == cfg.max_iters:
            pv = predict(model, x_val)
            rho = float(np.mean([wd.spearman(pv[at], y_val[at]) for at in val_at])) if val_at else wd.spearman(pv, y_val)
            history.add(step, train_loss=float(np.mean(run_loss)), val_huber=float(F.huber_loss(
                torch.from_numpy(pv), torch.from_numpy(y_val), delta=cfg.huber_delta)), val_spearman=rho)
            run_loss = []
            if stopper.update(rho, step):
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            bar.set_postfix(val_spearman=f"{rho:.4f}", best=f"{stopper.best or float('nan'):.4f}")
            if stopper.should_stop:
                break
    bar.close()
    if best_state is not None:  # None only when every evaluation was NaN: keep the last weights
        model.load_state_dict(best_state)
    model.eval()

    def score(words: list[str]) -> np.ndarray:
        return predict(model, torch.from_numpy(encode_words(words, max_len=max_len)).to(opts.device))

    ranks = wd.rank_report(score, data, split)
    test_rho = ranks["all"]
    jab = wd.jabberwocky(score, data, split)
    seconds = time.time() - t0
    config = {"preset": preset_name, **dataclasses.asdict(cfg), "seed": opts.seed, "data": opts.data,
              "device": opts.device, "data_recipe": data.recipe()}
    ckpt_path = save_checkpoint(
        out / f"{preset_name}.pt", model=model, model_args=model_args, family="bytecnn", tokenizer=None,
        iter_num=stopper.best_step, best_val_loss=_at_best(history, "val_huber", stopper.best_step), config=config,
        best_val_spearman=stopper.best, test_spearman=test_rho, history=history.to_dict())
    summary = {
        "checkpoint": str(ckpt_path), "preset": preset_name, "params": sum(p.numel() for p in model.parameters()),
        "words": len(data), "train_words": len(split.train), "val_words": len(split.val),
        "test_words": len(split.test), "best_val_spearman": stopper.best, "test_spearman": test_rho,
        "test_spearman_stratified": ranks["stratified"], "test_spearman_top50k": ranks["top50k"],
        "stratified_words_per_band": ranks["stratified_words"], "nonwords_per_batch": n_fake, "best_step": stopper.best_step, "steps": step,
        "stopped_early": stopper.should_stop, "seconds": round(seconds, 1),
        "jabberwocky_passed": jab["passed"], "jabberwocky_words_passed": f"{jab['words_passed']}/{jab['words']}",
    }
    write_log(out, {"summary": summary, "config": config, "history": history.to_dict(), "jabberwocky": jab})
    plot_curves(out / "curves.png", history, title=f"bytecnn {preset_name}: val Spearman (best step {stopper.best_step})",
                best_step=stopper.best_step, ylabel="loss / Spearman", keys=("train_loss", "val_huber", "val_spearman"))
    log(f"best val Spearman {stopper.best:.4f} at step {stopper.best_step}; test Spearman {test_rho:.4f} "
        f"(stratified {ranks['stratified'] or float('nan'):.4f}, top-50k {ranks['top50k'] or float('nan'):.4f}); "
        f"Jabberwocky {jab['words_passed']}/{jab['words']} words, {'PASS' if jab['passed'] else 'FAIL'}")
    return summary
