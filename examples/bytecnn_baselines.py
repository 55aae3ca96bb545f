"""The two baselines docs/bytecnn.md compares the CNNs with: word length alone, and a hashed character
n-gram linear model (fastText-like), on the same wordfreq list and the same hash split.

    python examples/bytecnn_baselines.py [--buckets 524288] [--epochs 4] [--seed 0]

Word length: Spearman of len(word) against the rarity target (ICF) on the test split. n-gram model:
every character 1- to 5-gram of "<word>" hashed (crc32) into ``--buckets`` weights plus a bias,
their sum is the score (torch EmbeddingBag), trained with Huber loss on the training split (Adam,
batches of 1,024, ``--epochs`` passes), early-stopped on val Spearman; test Spearman on the full test
split and on its words among the 50,000 most frequent. Prints one line per figure.
"""
from __future__ import annotations

import argparse
import zlib

import numpy as np
import torch
import torch.nn.functional as F

from edgekit.train import wordfreq_data as wd


def ngram_ids(word: str, buckets: int, n_max: int = 5) -> list[int]:
    s = f"<{word}>"
    return [zlib.crc32(s[i:i + n].encode()) % buckets for n in range(1, n_max + 1) for i in range(len(s) - n + 1)]


def bags(words: list[str], buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [ngram_ids(w, buckets) for w in words]
    offsets = np.cumsum([0] + [len(x) for x in ids[:-1]])
    return torch.tensor(np.concatenate(ids), dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--buckets", type=int, default=2**19)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    data = wd.load_words()
    split = wd.split_indices(data)
    y = data.icf
    test50k = split.test[split.test < 50_000]
    lengths = np.array([len(w) for w in data.words], dtype=np.float32)
    print(f"words {len(data.words):,} (train {len(split.train):,}, val {len(split.val):,}, test {len(split.test):,})")
    print(f"word length alone: test Spearman {wd.spearman(lengths[split.test], y[split.test]):.3f}, "
          f"top-50k {wd.spearman(lengths[test50k], y[test50k]):.3f}")

    model = torch.nn.EmbeddingBag(args.buckets, 1, mode="sum")
    torch.nn.init.zeros_(model.weight)
    bias = torch.nn.Parameter(torch.tensor([float(y[split.train].mean())]))
    opt = torch.optim.Adam([*model.parameters(), bias], lr=1e-3)

    def predict(idx: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            flat, off = bags([data.words[i] for i in idx], args.buckets)
            return (model(flat, off)[:, 0] + bias).numpy()

    rng = np.random.default_rng(args.seed)
    best, best_state = -1.0, None
    for epoch in range(args.epochs):
        order = rng.permutation(split.train)
        for s in range(0, len(order), 1024):
            idx = order[s:s + 1024]
            flat, off = bags([data.words[i] for i in idx], args.buckets)
            loss = F.huber_loss(model(flat, off)[:, 0] + bias, torch.from_numpy(y[idx]), delta=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        rho = wd.spearman(predict(split.val), y[split.val])
        print(f"epoch {epoch + 1}: val Spearman {rho:.3f}")
        if rho > best:
            best, best_state = rho, (model.weight.detach().clone(), bias.detach().clone())
    model.weight.data, bias.data = best_state
    pt = predict(split.test)
    print(f"hashed 1-5-gram linear model ({args.buckets:,} weights): test Spearman {wd.spearman(pt, y[split.test]):.3f}, "
          f"top-50k {wd.spearman(pt[np.isin(split.test, test50k)], y[test50k]):.3f}")


if __name__ == "__main__":
    main()
