"""Train the AMN preset: next MiniLM sentence vector from the previous 5, on stdlib docstrings.

    edgekit train amn --out runs/amn                  # -> runs/amn/amn.pt, train_log.json, curves
    edgekit train amn --set infonce=0.1               # the notes' MSE + InfoNCE variant (off by default)

In-distribution: one document per stdlib module (its docstrings in source order), split by module.
Out-of-distribution: pydoc_data's language-reference topics (``--set ood=...`` picks another corpus).
Every figure sits next to two baselines, "repeat the last vector" and "mean of the context": the
model is only useful by the margin it beats them. ``max_iters`` counts optimizer steps; ``tokens``
caps documents (of each corpus).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from edgekit.errors import UsageError
from edgekit.models.amn import AMN, PRESETS, AMNConfig
from edgekit.options import TrainOptions
from edgekit.train import vectors
from edgekit.train.common import log
from edgekit.train.fit import fit

SAMPLE = 64  # held-out windows stored in the checkpoint for export's parity and quality checks


def amn_loss(pred, target, *, infonce: float, temperature: float):
    """MSE, plus (optionally) in-batch InfoNCE: the true next vector against the batch's others."""
    loss = F.mse_loss(pred, target)
    if infonce:
        logits = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).T / temperature  # (B, B)
        loss = loss + infonce * F.cross_entropy(logits, torch.arange(len(pred), device=pred.device))
    return loss


def _cos(a, b) -> float:
    return F.cosine_similarity(a, b, dim=-1).mean().item()


@torch.no_grad()
def evaluate(model: AMN, X, Y, *, batch: int = 1024) -> dict[str, float]:
    """Mean cosine of the prediction and of both baselines with the true next vector, and the MSE."""
    pred = torch.cat([model(X[s:s + batch]) for s in range(0, len(X), batch)])
    out = {"loss": F.mse_loss(pred, Y).item(), "cosine": _cos(pred, Y), "repeat_last": _cos(X[:, -1], Y),
           "mean_context": _cos(X.mean(1), Y), "windows": len(X)}
    out["gain_vs_best_baseline"] = out["cosine"] - max(out["repeat_last"], out["mean_context"])
    return out


def train(preset_name: str, opts: TrainOptions) -> dict:
    """Train ``preset_name``; returns the summary with the checkpoint path and the figures vs baselines."""
    return vectors.run(_train, PRESETS[preset_name], opts)


def _train(preset, hp: dict, model_args: dict, out, opts: TrainOptions) -> dict:
    device, ctx = hp["device"], model_args["ctx"]
    source = hp["data"] or "stdlib"
    ood_source = hp["ood"] if hp["ood"] != "auto" else "pydoc" if source == "stdlib" else "stdlib"
    win = vectors.concept_windows(source, ctx=ctx, cap=hp["tokens"], progress=opts.progress)
    ood = vectors.concept_windows(ood_source, ctx=ctx, cap=hp["tokens"], all_splits=True,
                                  progress=opts.progress)["test"]
    data = {k: tuple(torch.from_numpy(a).to(device) for a in v) for k, v in {**win, "ood": ood}.items()}
    sizes = {k: len(v[0]) for k, v in data.items()}
    if not sizes["train"] or not sizes["val"] or not sizes["test"]:
        raise UsageError(f"amn needs windows in every split; got {sizes} from {source!r}; raise --tokens")
    log(f"{preset.name}: {sizes['train']} train / {sizes['val']} val / {sizes['test']} test windows from {source}, "
        f"{sizes['ood']} out-of-distribution from {ood_source}")
    model = AMN(AMNConfig(**model_args)).to(device)
    X, Y = data["train"]
    probe = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[:2048]

    def draw(gen):
        return torch.randint(len(X), (hp["batch_size"],), generator=gen).to(device)

    def loss_fn(model, idx):
        return amn_loss(model(X[idx]), Y[idx], infonce=hp["infonce"], temperature=hp["temperature"])

    def figures():
        val = evaluate(model, *data["val"])
        return {"train_loss": evaluate(model, X[probe], Y[probe])["loss"], "val_loss": val["loss"],
                "val_cosine": val["cosine"]}

    ckpt_path = out / f"{preset.name}.pt"
    sample_x, sample_y = (t[:SAMPLE].cpu().clone() for t in data["test"])  # clone: a view saves the whole split

    save = vectors.best_saver(ckpt_path, model=model, model_args=model_args, family="amn", preset=preset.name, hp=hp,
                              data={"source": source, "ood": ood_source, "windows": sizes},
                              heldout_context=sample_x, heldout_next=sample_y)

    spec = vectors.fit_spec(model, hp=hp, batch=draw, loss=loss_fn, evaluate=figures, on_best=save)
    run = fit(spec, hp=hp, desc=f"train {preset.name}", progress_bar=opts.progress, time_budget=opts.time_budget)
    metrics = {k: evaluate(model, *data[k]) for k in ("test", "val", "ood")}
    best = run.stopper
    save(best.best_step, {"val_loss": best.best}, metrics)
    summary = {"checkpoint": str(ckpt_path), "preset": preset.name, "family": "amn", "params": model.num_params(),
               "best_step": best.best_step, "steps": run.steps, "seconds": round(run.seconds, 1),
               "best_val_loss": best.best, "stopped_by": run.stopped_by, "train_seconds": run.seconds, "data": {"source": source, "ood": ood_source, "windows": sizes},
               "metrics": metrics, "settings": hp}
    vectors.finish_run(out, preset=preset, summary=summary, history=run.history, stopper=best,
                       keys=("train_loss", "val_loss"), ylabel="MSE")
    for k, name in (("test", "in-distribution"), ("ood", "out-of-distribution")):
        m = metrics[k]
        log(f"{preset.name} {name}: cosine {m['cosine']:.3f} vs repeat-last {m['repeat_last']:.3f}, "
            f"mean-of-context {m['mean_context']:.3f} ({m['gain_vs_best_baseline']:+.3f})")
    return summary
