"""torchrun: the ranks agree on every stop (issue 24, class 7), so none waits in a collective the others left.

Two gloo processes on CPU run ``fit`` on a tiny model, each with its own clock: rank 1's runs three times as
fast, so its time budget expires at a different step than rank 0's. Without agreement rank 1 would evaluate
(an all_reduce of the figures) while rank 0 takes another step (an all_reduce of the gradients) and both would
hang. With ``distributed.agree`` both stop at the same step, by the time budget, and exit cleanly. A loss that
diverges on one rank only stops both, with the same error.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    from edgekit.errors import DataError
    from edgekit.train import distributed as dist
    from edgekit.train.fit import Schedule, TrainSpec, fit

    mode = sys.argv[1]
    dist.setup("cpu")
    rank = dist.rank()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    steps = [0]

    def batch(g):
        x = torch.randn(8, 4, generator=g)
        return x, x.sum(1, keepdim=True)

    def loss(m, b):
        steps[0] += 1
        out = torch.nn.functional.mse_loss(m(b[0]), b[1])
        if mode == "diverge" and rank == 1 and steps[0] == 7:
            return out * float("nan")
        return out

    ticks = [0.0]

    def clock():  # rank 0: 1 s a call, rank 1: 3 s a call; a 20 s budget runs out at different steps
        ticks[0] += 1.0 if rank == 0 else 3.0
        return ticks[0]

    spec = TrainSpec(model=model, batch=batch, loss=loss, evaluate=lambda tl: {"val_loss": float(tl)},
                     schedule=Schedule(warmup=1))
    hp = {"max_iters": 200, "eval_interval": 50, "batch_size": 8, "lr": 1e-2, "weight_decay": 0.0,
          "patience": 100, "device": "cpu"}
    try:
        run = fit(spec, hp=hp, desc="t", progress_bar=False, time_budget=20.0, clock=clock)
        out = {"rank": rank, "steps": run.steps, "stopped_by": run.stopped_by, "evals": run.history.steps}
    except DataError as e:
        out = {"rank": rank, "error": str(e)}
    dist.teardown()
    print("RESULT " + json.dumps(out), flush=True)
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, mode: str) -> list[dict]:
    script = tmp_path / "stop.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                        f"--master_port={_free_port()}", str(script), mode], capture_output=True, text=True,
                       env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    # the two ranks share stdout: their lines can interleave, so each result is decoded where it starts
    results = [json.JSONDecoder().raw_decode(r.stdout, m.end())[0] for m in re.finditer("RESULT ", r.stdout)]
    assert sorted(x["rank"] for x in results) == [0, 1], r.stdout
    return sorted(results, key=lambda x: x["rank"])


def test_time_budget_expiring_at_different_steps_stops_every_rank_at_the_same_step(tmp_path):
    r0, r1 = _torchrun(tmp_path, "budget")
    assert r0["stopped_by"] == r1["stopped_by"] == "time_budget", (r0, r1)
    assert r0["steps"] == r1["steps"] < 20, (r0, r1)  # rank 1's clock ran out first; rank 0 followed it
    assert r0["evals"] == r1["evals"] and r0["evals"][-1] == r0["steps"]  # one last evaluation, together


def test_a_loss_diverging_on_one_rank_stops_both(tmp_path):
    r0, r1 = _torchrun(tmp_path, "diverge")
    assert "diverged at step 6" in r0.get("error", "") and "diverged at step 6" in r1.get("error", ""), (r0, r1)
