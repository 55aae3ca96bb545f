"""karpathy/nanoGPT's own files on the fast, verified path (issue 13).

The fixtures write what nanoGPT writes, byte for byte in layout: ``data/<dataset>/`` as
data/shakespeare_char/prepare.py does (input.txt, 90/10 split by position, uint16 ``tofile``,
``meta.pkl`` with vocab_size/itos/stoi) and ``out*/ckpt.pt`` as train.py saves it (the compiled model's
``_orig_mod.`` state dict, the AdamW state, model_args with dropout, iter_num, best_val_loss as a
tensor, and ``config`` holding train.py's globals: dataset, bias=False, ...). The model is trained
briefly here so its logits have real margins: on random weights every quantized scheme fails.
"""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import onnx
import pytest
import torch
from torch.nn import functional as F

from conftest import run_cli
from edgekit.models.gpt import GPT, GPTConfig
from edgekit.train.data import corpus_files, read_text

CHAR_ARGS = dict(n_layer=1, n_head=4, n_embd=128, block_size=32, bias=False, dropout=0.0)


def _train_config(**over) -> dict:
    """train.py's ``config``: its int/float/bool/str globals after the command line's overrides."""
    cfg = dict(out_dir="out", eval_interval=250, log_interval=10, eval_iters=200, eval_only=False,
               always_save_checkpoint=False, init_from="scratch", wandb_log=False, wandb_project="owt",
               wandb_run_name="gpt2", dataset="openwebtext", gradient_accumulation_steps=1, batch_size=32,
               block_size=32, n_layer=1, n_head=4, n_embd=128, dropout=0.0, bias=False, learning_rate=3e-3,
               max_iters=300, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, decay_lr=True,
               warmup_iters=10, lr_decay_iters=300, min_lr=3e-4, backend="nccl", device="cpu", dtype="float32",
               compile=True)
    cfg.update(over)
    return cfg


def write_char_dataset(folder, text: str) -> dict:
    """data/<name>/ exactly as data/shakespeare_char/prepare.py writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "input.txt").write_text(text)
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    n = len(text)
    np.array([stoi[c] for c in text[: int(n * 0.9)]], dtype=np.uint16).tofile(folder / "train.bin")
    np.array([stoi[c] for c in text[int(n * 0.9):]], dtype=np.uint16).tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    return stoi


def save_like_train_py(path, model: GPT, optimizer, model_args: dict, config: dict, *, iter_num: int, val_loss):
    """train.py's checkpoint: torch.compile'd model's state dict (``_orig_mod.`` keys) and all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": sd, "optimizer": optimizer.state_dict(), "model_args": model_args, "iter_num": iter_num,
                "best_val_loss": torch.tensor(val_loss), "config": config}, path)


def _ascii_text(chars: int) -> str:
    files, _ = corpus_files(None)
    out, n = [], 0
    for f in files:
        t = read_text(f.path)
        if t and t.isascii():
            out.append(t)
            n += len(t)
            if n >= chars:
                break
    return "\n".join(out)[:chars]


@pytest.fixture(scope="module")
def nano_char(tmp_path_factory):
    """A nanoGPT folder with a character model (vocabulary < n_embd, bias off) trained 300 steps."""
    root = tmp_path_factory.mktemp("nanoGPT")
    text = _ascii_text(300_000)
    write_char_dataset(root / "data" / "stdlib_char", text)
    data = np.fromfile(root / "data" / "stdlib_char" / "train.bin", dtype=np.uint16).astype(np.int64)
    vocab = len(set(text))
    assert vocab < CHAR_ARGS["n_embd"]
    args = dict(CHAR_ARGS, vocab_size=vocab)
    torch.manual_seed(1337)
    model = GPT(GPTConfig(**args))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    B, T = 32, args["block_size"]
    for _ in range(300):
        ix = torch.randint(len(data) - T - 1, (B,), generator=g)
        x = torch.stack([torch.from_numpy(data[i:i + T]) for i in ix.tolist()])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T]) for i in ix.tolist()])
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_like_train_py(root / "out-stdlib-char" / "ckpt.pt", model, opt, args,
                       _train_config(dataset="stdlib_char", out_dir="out-stdlib-char"), iter_num=300,
                       val_loss=float(loss.detach()))
    return {"root": root, "ckpt": root / "out-stdlib-char" / "ckpt.pt", "model": model, "text": text}


@pytest.fixture(scope="module")
def char_exports(nano_char):
    """The no-flags export from the nanoGPT folder (auto) and an fp32 one, with their JSON reports."""
    cwd = os.getcwd()
    os.chdir(nano_char["root"])
    try:
        r = run_cli("export", "out-stdlib-char/ckpt.pt", "--json")
        r32 = run_cli("export", "out-stdlib-char/ckpt.pt", "--quant", "fp32", "-o", "fp32.onnx", "--json", "--quiet")
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, r.output
    assert r32.exit_code == 0, r32.output
    return {"auto": nano_char["root"] / "out-stdlib-char" / "ckpt.onnx", "auto_report": json.loads(r.stdout),
            "auto_stderr": r.stderr, "fp32": nano_char["root"] / "fp32.onnx"}


def _meta(path):
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["edgekit"])


def test_char_model_from_the_nanogpt_folder_is_quantized_and_names_its_data(nano_char, char_exports):
    report, meta = char_exports["auto_report"], _meta(char_exports["auto"])
    assert report["scheme"] != "fp32", report["extra"]["auto"]
    assert os.path.getsize(char_exports["auto"]) < 0.6 * os.path.getsize(char_exports["fp32"])
    final = meta["verification"]["final"]
    assert final["val_loss_delta_pct"] <= 1.0 and final["greedy_agreement"] >= 0.95
    data = meta["verification"]["data"]
    val_bin = nano_char["root"] / "data" / "stdlib_char" / "val.bin"
    # names, never absolute local paths (issue 24): the folder layout nanoGPT uses and the tokens' sha256
    assert data["source"] == "nanoGPT val.bin" and data["name"] == "data/stdlib_char/val.bin" and val_bin.is_file()
    assert data["tokens"] == len(np.fromfile(val_bin, dtype=np.uint16)) and len(data["sha256"]) == 64
    assert report["extra"]["verification_data"] == data
    stderr = char_exports["auto_stderr"]
    assert f"from {(nano_char['root'] / 'data' / 'stdlib_char' / 'meta.pkl').resolve()}" in stderr
    assert "auto: chose" in run_cli("export", nano_char["ckpt"], "-o", nano_char["root"] / "again.onnx",
                                    "--quiet").stdout  # the table says why each scheme lost
    assert meta["tokenizer"]["kind"] == "char" and len(meta["tokenizer"]["itos"]) < CHAR_ARGS["n_embd"]


def _nanogpt_generate(model: GPT, ids: list[int], n: int) -> list[int]:
    """nanoGPT's ``generate`` with top_k=1: crop to the last block_size tokens, take the argmax."""
    idx = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            cond = idx if idx.size(1) <= model.config.block_size else idx[:, -model.config.block_size:]
            nxt = model(cond)[0][:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
    return idx[0, len(ids):].tolist()


def test_fp32_gives_nanogpts_tokens_inside_the_block_and_with_exact_window_past_it(nano_char, char_exports):
    from edgekit.runtime import load

    lm = load(char_exports["fp32"], threads=1)
    block = lm.block_size
    prompt = nano_char["text"][1000:1000 + block - 5]  # fits the block: fed whole, not cut to 3/4 of it
    ref = _nanogpt_generate(nano_char["model"], lm.tokenizer.encode(prompt), 60)
    slide = lm.generate(prompt, max_new_tokens=60, heal=False)
    exact = lm.generate(prompt, max_new_tokens=60, heal=False, window="exact")
    assert slide.token_ids[:6] == ref[:6]  # inside the block: identical
    assert exact.token_ids == ref  # past it too, cropping like nanoGPT
    assert exact.window_slides == 60 - 6 and slide.window_slides < exact.window_slides
    long_prompt = nano_char["text"][2000:2000 + 3 * block]  # longer than the block: nanoGPT crops it
    ref = _nanogpt_generate(nano_char["model"], lm.tokenizer.encode(long_prompt), 20)
    assert lm.generate(long_prompt, max_new_tokens=20, heal=False, window="exact").token_ids == ref
    r = run_cli("infer", char_exports["fp32"], long_prompt, "--window", "exact", "--no-heal", "--temperature", "0",
                "--max-new-tokens", "20", "--json")
    assert r.exit_code == 0, r.output and json.loads(r.stdout)["token_ids"] == ref


def test_meta_and_val_bin_are_found_beside_the_checkpoints_parents(nano_char, tmp_path):
    from edgekit.train.checkpoint import load_checkpoint

    cwd = os.getcwd()
    os.chdir(tmp_path)  # not the nanoGPT folder: found through the checkpoint's parent
    try:
        ckpt = load_checkpoint(nano_char["ckpt"])
    finally:
        os.chdir(cwd)
    folder = (nano_char["root"] / "data" / "stdlib_char").resolve()
    assert ckpt.meta_path == folder / "meta.pkl" and ckpt.dataset.val_bin == folder / "val.bin"
    assert ckpt.tokenizer["kind"] == "char" and ckpt.source == "nanogpt"


def _untrained_ckpt(path, *, vocab: int, dataset: str) -> None:
    args = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, bias=False, vocab_size=vocab, dropout=0.0)
    model = GPT(GPTConfig(**args))
    save_like_train_py(path, model, torch.optim.AdamW(model.parameters()), args, _train_config(dataset=dataset),
                       iter_num=10, val_loss=5.0)


def test_a_mismatched_meta_pkl_is_an_error_and_nothing_is_written(tmp_path):
    write_char_dataset(tmp_path / "data" / "shakespeare_char", "First Citizen:\nBefore we proceed any further.\n" * 20)
    _untrained_ckpt(tmp_path / "out" / "ckpt.pt", vocab=50304, dataset="shakespeare_char")
    r = run_cli("export", tmp_path / "out" / "ckpt.pt", "-o", tmp_path / "x.onnx")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "characters but checkpoint" in r.stderr and "50,304-id vocabulary" in r.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_a_char_model_without_its_meta_pkl_says_where_it_looked(tmp_path):
    _untrained_ckpt(tmp_path / "out" / "ckpt.pt", vocab=20, dataset="my_chars")
    r = run_cli("export", tmp_path / "out" / "ckpt.pt", "-o", tmp_path / "x.onnx")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "20-id vocabulary" in r.stderr and "data/my_chars" in r.stderr and "--meta" in r.stderr


def test_unnamed_verification_data_skips_what_the_vocabulary_lacks(nano_char, tmp_path):
    """No val.bin: the stdlib is used with a warning, its characters outside the 90-odd are skipped."""
    import shutil

    (tmp_path / "data" / "stdlib_char").mkdir(parents=True)
    shutil.copy(nano_char["root"] / "data" / "stdlib_char" / "meta.pkl", tmp_path / "data" / "stdlib_char")
    shutil.copy(nano_char["ckpt"], tmp_path / "ckpt.pt")
    r = run_cli("export", tmp_path / "ckpt.pt", "--quant", "fp32", "-o", tmp_path / "c.onnx", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)["extra"]["verification_data"]
    assert data["source"] == "Python standard library" and data["skipped_out_of_vocabulary"] > 0
    assert "no data/stdlib_char/val.bin was found" in data["warning"]
    assert "warning: verifying on the Python standard library" in r.stderr


def test_val_bin_ids_outside_the_vocabulary_are_skipped_and_counted(nano_char, tmp_path):
    import shutil

    folder = tmp_path / "data" / "stdlib_char"
    shutil.copytree(nano_char["root"] / "data" / "stdlib_char", folder)
    ids = np.fromfile(folder / "val.bin", dtype=np.uint16)
    ids[::100] = 60000  # not an id of this model
    ids.tofile(folder / "val.bin")
    shutil.copy(nano_char["ckpt"], tmp_path / "ckpt.pt")
    r = run_cli("export", tmp_path / "ckpt.pt", "--quant", "fp32", "-o", tmp_path / "c.onnx", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)["extra"]["verification_data"]
    assert data["source"] == "nanoGPT val.bin" and data["skipped_out_of_vocabulary"] == len(ids[::100])


def test_bias_off_and_bias_on_fuse_to_the_same_graph(tmp_path):
    counts = {}
    for bias in (True, False):
        args = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=bias, vocab_size=50304, dropout=0.0)
        torch.manual_seed(0)
        model = GPT(GPTConfig(**args))
        ck = tmp_path / f"bias{bias}" / "ckpt.pt"
        save_like_train_py(ck, model, torch.optim.AdamW(model.parameters()), args, _train_config(bias=bias),
                           iter_num=10, val_loss=9.0)
        r = run_cli("export", ck, "--quant", "fp32", "-o", ck.with_suffix(".onnx"), "--json", "--quiet")
        assert r.exit_code == 0, r.output
        opt = next(s for s in json.loads(r.stdout)["steps"] if s["step"] == "optimize")
        assert opt["ok"] and "skipped" not in opt["note"], opt
        counts[bias] = opt["parity"]["nodes_after"]
    assert counts[True] == counts[False]


def test_export_honours_omp_num_threads_and_threads(nano_char, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    r = run_cli("export", nano_char["ckpt"], "--quant", "fp32", "-o", tmp_path / "a.onnx", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["extra"]["threads"] == {"torch": 1, "checks": 1, "timing": 1}
    r = run_cli("export", nano_char["ckpt"], "--quant", "fp32", "-o", tmp_path / "b.onnx", "--json", "--quiet",
                "--threads", "2")
    assert json.loads(r.stdout)["extra"]["threads"] == {"torch": 2, "checks": 2, "timing": 2}
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")
    r = run_cli("export", nano_char["ckpt"], "-o", tmp_path / "c.onnx")
    assert r.exit_code == 2 and "OMP_NUM_THREADS must be a positive integer" in r.stderr


def test_no_heal_feeds_the_prompt_as_sample_py_does(tiny_gpt):
    prompt = "def f():\n"  # ends in "\n", which longer GPT-2 tokens extend: healing would regenerate it
    healed = json.loads(run_cli("infer", tiny_gpt["fp32"], prompt, "--max-new-tokens", "4", "--json").stdout)
    r = run_cli("infer", tiny_gpt["fp32"], prompt, "--max-new-tokens", "4", "--json", "--no-heal")
    assert r.exit_code == 0, r.output
    plain = json.loads(r.stdout)
    assert healed["healed"] == 1 and plain["healed"] == 0
    assert plain["prompt_ids"] == healed["prompt_ids"]  # the prompt's ids; healing only changes what is fed
