"""Write a random-init checkpoint exactly as karpathy/nanoGPT's train.py saves one, for any GPT-2 shape,
without holding it in memory (a gpt2-xl file is 18.7 GB: weights plus AdamW's two moments).

    python examples/nanogpt_init.py gpt2-xl out-xl/ckpt.pt        # a preset from `edgekit presets`
    edgekit export out-xl/ckpt.pt --quant int4

The keys are train.py's (model, optimizer, model_args, iter_num, best_val_loss, config); the weights follow
nanoGPT's init (normal 0.02, residual projections 0.02/sqrt(2 n_layer), zero biases, unit LayerNorms), the
optimizer's state has AdamW's layout (step, exp_avg, exp_avg_sq per parameter; two groups, decayed and not).
Every tensor lives in a memory-mapped scratch file beside the output while torch.save streams it, so the
process needs little more than one tensor of memory; the moments are zeros (a sparse file).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from edgekit.models.gpt import GPT, PRESETS


def _file_tensor(path: Path, numel: int, *, shared: bool) -> torch.Tensor:
    """A flat float32 tensor over a file mapped into memory (shared: writes go to the file; else a sparse
    file read as zeros, copy-on-write)."""
    with open(path, "wb") as f:
        f.truncate(4 * numel)
    return torch.empty(0).set_(torch.UntypedStorage.from_file(str(path), shared=shared, nbytes=4 * numel), 0, (numel,))


def write(preset: str, out: Path, *, seed: int = 1337) -> Path:
    p = PRESETS[preset]
    cfg = p.model
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GPT(cfg).state_dict().items() if k != "lm_head.weight"}
    total = sum(math.prod(s) for s in shapes.values())
    gen = torch.Generator().manual_seed(seed)
    scratch, sparse = out.with_name(out.name + ".weights"), out.with_name(out.name + ".zeros")
    try:
        flat, zeros = _file_tensor(scratch, total, shared=True), _file_tensor(sparse, 2 * total, shared=False)
        model, decay, no_decay, at = {}, [], [], 0
        for k, shape in shapes.items():
            n = math.prod(shape)
            t = flat[at:at + n]
            if k.endswith("bias"):
                t.zero_()
            elif ".ln_" in k or k.startswith("transformer.ln_f"):
                t.fill_(1.0)
            else:  # nanoGPT's init, chunk by chunk
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if k.endswith("c_proj.weight") else 0.02
                for i in range(0, n, 1 << 24):
                    t[i:i + (1 << 24)].normal_(0.0, std, generator=gen)
            model[k] = t.view(shape)
            (decay if len(shape) >= 2 else no_decay).append(k)
            at += n
        model["lm_head.weight"] = model["transformer.wte.weight"]  # tied: one storage, as nanoGPT saves it
        state, at = {}, 0
        for i, k in enumerate(decay + no_decay):  # AdamW's two moments per parameter
            n = math.prod(shapes[k])
            state[i] = {"step": torch.tensor(1.0), "exp_avg": zeros[at:at + n].view(shapes[k]),
                        "exp_avg_sq": zeros[at + n:at + 2 * n].view(shapes[k])}
            at += 2 * n
        groups = [{"weight_decay": 0.1, "params": list(range(len(decay)))},
                  {"weight_decay": 0.0, "params": list(range(len(decay), len(decay) + len(no_decay)))}]
        for g in groups:
            g.update({"lr": 6e-4, "betas": (0.9, 0.95), "eps": 1e-8, "amsgrad": False, "foreach": None,
                      "maximize": False, "capturable": False, "differentiable": False, "fused": None})
        model_args = {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "block_size": cfg.block_size,
                      "bias": cfg.bias, "vocab_size": cfg.vocab_size, "dropout": 0.0}
        torch.save({"model": model, "optimizer": {"state": state, "param_groups": groups}, "model_args": model_args,
                    "iter_num": 0, "best_val_loss": 1e9,
                    "config": {**model_args, "dataset": "openwebtext", "init_from": "scratch"}}, out)
    finally:
        scratch.unlink(missing_ok=True)
        sparse.unlink(missing_ok=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("preset", choices=[k for k, v in PRESETS.items() if v.family == "gpt"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=1337)
    a = ap.parse_args(argv)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    path = write(a.preset, a.out, seed=a.seed)
    print(f"{path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
