"""Training on the stdlib: loss goes down, early stopping keeps the best, resume continues exactly."""
import json

import torch

from conftest import run_cli


def test_tiny_run_lowers_val_loss_and_writes_artifacts(tiny_gpt):
    log = json.loads((tiny_gpt["dir"] / "train_log.json").read_text())
    val = log["history"]["val_loss"]
    assert val[0] > 10.0  # random init over 50,257 tokens: ln(50257) = 10.8
    assert log["best_val_loss"] < val[0] - 0.5
    assert (tiny_gpt["dir"] / "phase1_curves.png").stat().st_size > 5000
    ck = torch.load(tiny_gpt["ckpt"], weights_only=True)
    assert {"model", "model_args", "iter_num", "best_val_loss", "config", "family", "tokenizer"} <= ck.keys()
    assert ck["family"] == "gpt" and ck["tokenizer"] == {"kind": "gpt2"}
    assert ck["best_val_loss"] == min(val)
    assert log["train_tokens"] == 3600 and log["val_tokens"] == 400  # --tokens 4000, 90/10 like the notes


def test_early_stopping_keeps_best_checkpoint(tmp_path):
    # 300 tokens for a 1.6M-parameter model: it memorises at once, val loss turns up, training stops.
    r = run_cli("train", "phase1", "--out", tmp_path, "--tokens", 300, "--max-iters", 400, "--eval-interval", 10,
                "--patience", 2, "--lr", 3e-3, "--quiet", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["stopped_early"] and s["steps"] < 400
    assert s["steps"] == s["best_step"] + 2 * 10
    assert torch.load(tmp_path / "phase1.pt", weights_only=True)["iter_num"] == s["best_step"]
    assert "WARNING" in r.stderr and "parameters per training token" in r.stderr


def test_killed_run_resumes_and_matches_uninterrupted_run(tmp_path):
    """SIGKILL a real training process after its step-10 checkpoint, resume, compare with a clean run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--tokens", 3000, "--max-iters", 30, "--eval-interval", 5, "--patience", 100, "--seed", 7, "--quiet"]
    run_cli("train", "phase1", "--out", tmp_path / "a", *args)
    out = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "train", "phase1", "--out", str(out),
                             *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "phase1.last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["iter_num"] >= 10:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(last, weights_only=True)["iter_num"]
    assert 10 <= killed_at < 30
    resumed = run_cli("train", "phase1", "--out", out, "--resume", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    a = json.loads((tmp_path / "a" / "train_log.json").read_text())["history"]
    b = json.loads((out / "train_log.json").read_text())["history"]
    assert a["steps"] == b["steps"] == list(range(0, 31, 5))
    assert max(abs(x - y) for x, y in zip(a["val_loss"], b["val_loss"])) < 1e-4
    assert max(abs(x - y) for x, y in zip(a["train_loss"], b["train_loss"])) < 1e-4


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    r = run_cli("train", "phase1", "--out", tmp_path, "--resume")
    assert r.exit_code == 1
    assert r.stderr.startswith("edgekit: error: --resume: no ") and r.stderr.count("\n") == 1
