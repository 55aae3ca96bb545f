"""Train a sequence autoencoder preset on real token vectors (MiniLM's static embeddings of stdlib prose).

    edgekit train ae-baseline --out runs/seqae          # -> runs/seqae/ae-baseline.pt, train_log.json, curves
    edgekit train ae-attention --tokens 2000 --set max_len=24

Figures on the held-out test sequences: token-level cosine (per sequence, then averaged, as the notes),
sequence-level cosine (of the mean vectors), and two ablations that show what bypasses the 16-d
bottleneck: the code zeroed, and (attention presets) the attention output zeroed.
``max_iters`` counts optimizer steps; ``tokens`` caps training sequences.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from edgekit.models.seqae import PRESETS, SeqAE, SeqAEConfig
from edgekit.options import TrainOptions
from edgekit.train import vectors
from edgekit.train.common import log
from edgekit.train.fit import fit

SAMPLE = 64  # held-out sequences stored in the checkpoint for export's parity and quality checks


def _pad(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids zero-padded (N, T) and lengths (N,)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    ids = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.from_numpy(s)
    return ids, lengths


def _mask(lengths, T):
    return (torch.arange(T, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)).float()  # (B, T)


def hybrid_loss(recon, x, lengths, *, cos_weight: float):
    """The notes' loss over real tokens: cos_weight * (1 - cosine) + (1 - cos_weight) * MSE."""
    m = _mask(lengths, x.size(1))
    cos = F.cosine_similarity(recon, x, dim=-1)  # (B, T)
    per_token = cos_weight * (1 - cos) + (1 - cos_weight) * (recon - x).pow(2).mean(-1)
    return (per_token * m).sum() / m.sum()


def similarity(recon, x, lengths) -> dict[str, torch.Tensor]:
    """Per sequence: mean token cosine and the cosine of the mean vectors, (N,) each."""
    m = _mask(lengths, x.size(1))
    tok = (F.cosine_similarity(recon, x, dim=-1) * m).sum(1) / m.sum(1)
    mean = lambda v: (v * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True)  # noqa: E731
    return {"token": tok, "sequence": F.cosine_similarity(mean(recon), mean(x), dim=-1)}


@torch.no_grad()
def evaluate(model: SeqAE, ids, lengths, table, *, cos_weight: float, ablate: str | None = None,
             batch: int = 256) -> dict[str, float]:
    """Loss, token and sequence cosine (mean and std over sequences) on a whole split."""
    tok, seq, loss, n = [], [], 0.0, 0
    for s in range(0, len(ids), batch):
        L = lengths[s:s + batch]
        x = table[ids[s:s + batch, :int(L.max())]]  # (B, T, D)
        recon = model.reconstruct(x, L, ablate=ablate)
        loss += hybrid_loss(recon, x, L, cos_weight=cos_weight).item() * len(L)
        n += len(L)
        sim = similarity(recon, x, L)
        tok.append(sim["token"])
        seq.append(sim["sequence"])
    tok, seq = torch.cat(tok), torch.cat(seq)
    return {"loss": loss / n, "token_cosine": tok.mean().item(), "token_cosine_std": tok.std().item(),
            "sequence_cosine": seq.mean().item()}


def _mean_vector_baseline(train_ids, train_lengths, ids, lengths, table) -> float:
    """Token cosine of always answering the training set's mean token vector: the floor to beat."""
    mean = table[train_ids][_mask(train_lengths, train_ids.size(1)).bool()].mean(0)  # (D,)
    x = table[ids]
    recon = mean.expand_as(x)
    return similarity(recon, x, lengths)["token"].mean().item()


def train(preset_name: str, opts: TrainOptions) -> dict:
    """Train ``preset_name``; returns the summary with the checkpoint path and held-out figures."""
    return vectors.run(_train, PRESETS[preset_name], opts)


def _train(preset, hp: dict, model_args: dict, out, opts: TrainOptions) -> dict:
    device = hp["device"]
    source = hp["data"] or "stdlib"
    seqs = vectors.token_sequences(source, max_len=hp["max_len"], cap=hp["tokens"])
    table = torch.from_numpy(vectors.token_table()).to(device)
    data = {k: tuple(t.to(device) for t in _pad(v)) for k, v in seqs.items()}
    n_tokens = {k: int(v[1].sum()) for k, v in data.items()}
    log(f"{preset.name}: {len(seqs['train'])} train / {len(seqs['val'])} val / {len(seqs['test'])} test sequences "
        f"({n_tokens['train']:,} training tokens) from {source}")
    model = SeqAE(SeqAEConfig(**model_args)).to(device)
    train_ids, train_len = data["train"]
    probe = torch.randperm(len(train_ids), generator=torch.Generator().manual_seed(0))[:512]
    w = hp["cos_weight"]

    def draw(gen):
        return torch.randint(len(train_ids), (hp["batch_size"],), generator=gen).to(device)

    def loss_fn(model, idx):
        L = train_len[idx]
        x = table[train_ids[idx, :int(L.max())]]  # (B, T, D)
        recon, _ = model(x, L)
        return hybrid_loss(recon, x, L, cos_weight=w)

    def figures():
        val = evaluate(model, *data["val"], table, cos_weight=w)
        tr = evaluate(model, train_ids[probe], train_len[probe], table, cos_weight=w)
        return {"train_loss": tr["loss"], "val_loss": val["loss"], "val_token_cosine": val["token_cosine"]}

    ckpt_path = out / f"{preset.name}.pt"
    sample_ids, sample_len = (t[:SAMPLE].cpu().clone() for t in data["test"])  # clone: a view saves the whole split

    save = vectors.best_saver(ckpt_path, model=model, model_args=model_args, family="seqae", preset=preset.name,
                              hp=hp, data={"source": source, "sequences": {k: len(v) for k, v in seqs.items()},
                                           "tokens": n_tokens},
                              heldout_ids=sample_ids, heldout_lengths=sample_len)

    spec = vectors.fit_spec(model, hp=hp, batch=draw, loss=loss_fn, evaluate=figures, on_best=save)
    run = fit(spec, hp=hp, desc=f"train {preset.name}", progress_bar=opts.progress, time_budget=opts.time_budget)
    test = data["test"]
    metrics = {"test": evaluate(model, *test, table, cos_weight=w),
               "val": evaluate(model, *data["val"], table, cos_weight=w),
               "test_code_zeroed": evaluate(model, *test, table, cos_weight=w, ablate="code"),
               "mean_vector_token_cosine": _mean_vector_baseline(train_ids, train_len, *test, table)}
    if model.attn is not None:
        metrics["test_attention_off"] = evaluate(model, *test, table, cos_weight=w, ablate="attention")
    best = run.stopper
    save(best.best_step, {"val_loss": best.best}, metrics)
    summary = {"checkpoint": str(ckpt_path), "preset": preset.name, "family": "seqae", "params": model.num_params(),
               "best_step": best.best_step, "steps": run.steps, "seconds": round(run.seconds, 1),
               "best_val_loss": best.best, "stopped_by": run.stopped_by, "train_seconds": run.seconds, "data": {"source": source, "tokens": n_tokens}, "metrics": metrics,
               "settings": hp}
    vectors.finish_run(out, preset=preset, summary=summary, history=run.history, stopper=best,
                       keys=("train_loss", "val_loss"), ylabel="hybrid loss (0.9 cos + 0.1 MSE)")
    t = metrics["test"]
    log(f"{preset.name}: test token cosine {t['token_cosine']:.3f}, sequence cosine {t['sequence_cosine']:.3f}; "
        f"code zeroed {metrics['test_code_zeroed']['token_cosine']:.3f}; "
        f"mean-vector floor {metrics['mean_vector_token_cosine']:.3f}")
    return summary
