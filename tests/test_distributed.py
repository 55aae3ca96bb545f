"""DistributedDataParallel on CPU (gloo): 2 processes match 1 process on the same global batch."""
import json
import os
import socket
import subprocess
import sys

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ARGS = ["phase1", "--tokens", "3000", "--max-iters", "12", "--eval-interval", "4", "--batch-size", "8",
        "--patience", "100", "--seed", "5", "--quiet", "--json"]


def test_two_process_gloo_matches_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                          f"--master_port={_free_port()}", "-m", "edgekit.train", *ARGS, "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    single = subprocess.run([sys.executable, "-m", "edgekit.train", *ARGS, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    a, b = json.loads(ddp.stdout), json.loads(single.stdout)  # only rank 0 printed
    assert a["world_size"] == 2 and b["world_size"] == 1
    # the batch is global: 2 processes see the tokens 1 process sees, not twice as many
    assert a["tokens_seen"] == b["tokens_seen"] == 12 * 8 * 16  # steps x global batch x phase1's block
    ha = json.loads((tmp_path / "ddp" / "train_log.json").read_text())["history"]
    hb = json.loads((tmp_path / "one" / "train_log.json").read_text())["history"]
    assert ha["steps"] == hb["steps"]
    assert max(abs(x - y) for x, y in zip(ha["val_loss"], hb["val_loss"])) < 2e-3
    wa = torch.load(tmp_path / "ddp" / "phase1.last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "one" / "phase1.last.pt", weights_only=True)["model"]
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-3
    # a DDP checkpoint resumes in one process (resume across world sizes)
    more = subprocess.run([sys.executable, "-m", "edgekit.train", "phase1", "--out", str(tmp_path / "ddp"), "--resume",
                           "--quiet", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert more.returncode == 0, more.stderr[-2000:]
