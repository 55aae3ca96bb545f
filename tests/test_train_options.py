"""Every option of `edgekit train` is honoured by every family or refused with one line (options x families).

One tiny real run per family sets every honoured option to a non-default value at once; each table row
then checks its option's effect on that run's summary, log or checkpoint. Refusals run the CLI and
compare the exact error line. The time budget has its own tiny run per family.
"""
import json

import numpy as np
import pytest
import torch

from edgekit.options import TrainOptions
from edgekit.registry import find_preset
from edgekit.train import settings

from conftest import run_cli

# family -> (smallest preset, data cap that keeps the run to seconds, batch size, a family --set key=value)
FAMILIES = {
    "gpt": ("phase1", 2000, 4, ("eval_iters", "2", 2)),
    "bytecnn": ("nano-cnn", 3000, 64, ("rank_weight", "0.5", 0.5)),
    "seqae": ("ae-baseline", 100, 8, ("cos_weight", "0.8", 0.8)),
    "amn": ("amn", 6, 8, ("infonce", "0.1", 0.1)),
}
MAX_ITERS, EVAL_INTERVAL, PATIENCE, LR, SEED = 6, 3, 7, 2e-3, 11


def _recorded(ckpt: dict) -> dict:
    """The settings a checkpoint records (gpt and bytecnn: flat config; the vector families: config['train'])."""
    return ckpt["config"].get("train", ckpt["config"])


@pytest.fixture(scope="module", params=list(FAMILIES))
def tiny(request, tmp_path_factory):
    family = request.param
    preset, tokens, batch, (key, raw, _) = FAMILIES[family]
    out = tmp_path_factory.mktemp(family)
    r = run_cli("train", preset, "--out", out, "--tokens", tokens, "--max-iters", MAX_ITERS, "--eval-interval",
                EVAL_INTERVAL, "--patience", PATIENCE, "--batch-size", batch, "--lr", LR, "--seed", SEED,
                "--time-budget", 600, "--set", f"{key}={raw}", "--set", "threads=1", "--quiet", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    return {"family": family, "preset": preset, "out": out, "summary": summary, "stderr": r.stderr,
            "ckpt": torch.load(summary["checkpoint"], weights_only=True),
            "log": json.loads((out / "train_log.json").read_text())}


def _history_steps(t) -> list[int]:
    return [s for s in t["log"]["history"]["steps"] if s > 0]  # gpt also evaluates the untrained model (step 0)


def _resume(t):
    if t["family"] != "gpt":
        return None  # refused: see REFUSED
    r = run_cli("train", t["preset"], "--out", t["out"], "--resume", "--quiet", "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["steps"] == MAX_ITERS  # continued from the last checkpoint, already at the end


# option -> check of the tiny run (True when honoured)
HONOURED = {
    "--out": lambda t: t["summary"]["checkpoint"].startswith(str(t["out"])) and (t["out"] / "train_log.json").is_file(),
    "--max-iters": lambda t: t["summary"]["steps"] == MAX_ITERS,
    "--eval-interval": lambda t: _history_steps(t) == [EVAL_INTERVAL, 2 * EVAL_INTERVAL],
    "--patience": lambda t: _recorded(t["ckpt"])["patience"] == PATIENCE,
    "--batch-size": lambda t: _recorded(t["ckpt"])["batch_size"] == FAMILIES[t["family"]][2],
    "--lr": lambda t: _recorded(t["ckpt"])["lr"] == LR,
    "--seed": lambda t: _recorded(t["ckpt"])["seed"] == SEED,
    "--tokens": lambda t: _recorded(t["ckpt"])["tokens"] == FAMILIES[t["family"]][1],
    "--set": lambda t: _recorded(t["ckpt"])[FAMILIES[t["family"]][3][0]] == FAMILIES[t["family"]][3][2],
    "--time-budget": lambda t: t["summary"]["stopped_by"] == "max_iters",  # a budget not reached changes nothing
    "--quiet": lambda t: "\r" not in t["stderr"] and "it/s" not in t["stderr"],
    "--json": lambda t: isinstance(t["summary"], dict),
    "--resume": _resume,
}


@pytest.mark.parametrize("option", list(HONOURED))
def test_option_is_honoured_or_refused(tiny, option):
    result = HONOURED[option](tiny)
    if result is None:
        assert (option, tiny["family"]) in {(o, f) for o, f, *_ in REFUSED}, f"{option} neither honoured nor refused"
    else:
        assert result, f"{option} not honoured by {tiny['family']}"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_full_corpus_lifts_the_cap(family):
    fam, preset = find_preset(FAMILIES[family][0])
    capped = settings.resolve(preset, TrainOptions(tokens=5))
    full = settings.resolve(preset, TrainOptions(tokens=5, full_corpus=True))
    assert capped.train["tokens"] == 5 and full.train["tokens"] is None


NOT_RESUMABLE = "training takes minutes and does not resume; run it again without --resume"
REFUSED = [
    *[("--resume", f, ["--resume"], f"edgekit: error: {f} {NOT_RESUMABLE}") for f in ("bytecnn", "seqae", "amn")],
    *[("--set", f, ["--set", "colour=red"], f"edgekit: error: --set colour: not a {f} setting; known: max_iters, "
       "batch_size") for f in FAMILIES],
    *[("--set", f, ["--max-iters", "5", "--set", "max_iters=6"],
       "edgekit: error: --set max_iters: given twice (also as an option or an earlier --set); give it once")
      for f in FAMILIES],
    *[("--set", f, ["--set", "threads=two"], "edgekit: error: --set threads=two: expected an integer") for f in FAMILIES],
    *[("--data", f, ["--data", "/nonexistent/corpus.txt"], "/nonexistent/corpus.txt") for f in FAMILIES],
]
if not torch.cuda.is_available():
    REFUSED += [("--device", f, ["--device", "cuda"], "edgekit: error: --device cuda: no CUDA device is available on "
                 "this machine; use --device cpu") for f in FAMILIES]


@pytest.mark.parametrize("option, family, args, line", REFUSED, ids=[f"{o}-{f}-{i}" for i, (o, f, *_) in
                                                                       enumerate(REFUSED)])
def test_refusal_is_one_line(tmp_path, option, family, args, line):
    r = run_cli("train", FAMILIES[family][0], "--out", tmp_path / "run", *args, "--quiet")
    assert r.exit_code != 0
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("edgekit: error: ") and line in err, err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # nothing half-written


@pytest.mark.parametrize("family", list(FAMILIES))
def test_time_budget_stops_within_it_and_says_so(tmp_path, family):
    preset, tokens, batch, _ = FAMILIES[family]
    budget = 1.0
    r = run_cli("train", preset, "--out", tmp_path, "--tokens", tokens, "--batch-size", batch, "--max-iters", 100_000,
                "--eval-interval", 100_000, "--time-budget", budget, "--set", "threads=1", "--quiet", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["stopped_by"] == "time_budget" and 0 < s["steps"] < 100_000
    # the loop stops at the first step past the budget, after one last evaluation: within a few steps of it
    assert budget <= s["train_seconds"] < budget + 5.0
    assert f"time budget of {budget:g}s spent: stopped at step {s['steps']}" in r.stderr


def _infer_input(family: str, tmp_path) -> list[str]:
    """What `edgekit infer` takes for each family: a prompt, words, or .npy vectors (random, right shape)."""
    rng = np.random.default_rng(0)
    if family in ("seqae", "amn"):
        path = tmp_path / f"{family}.npy"
        np.save(path, rng.standard_normal((17 if family == "seqae" else 5, 384)).astype(np.float32))
        return [str(path)]
    return {"gpt": ["def get_"], "bytecnn": ["the", "brillig"]}[family]


def test_registry_families_all_have_a_tiny_run_here():
    """A family added to the registry must join this table, and so the round trip below."""
    from edgekit.registry import FAMILIES as REGISTERED

    assert set(REGISTERED) == set(FAMILIES)


def test_every_family_round_trips_export_runtime_infer_and_bench(tiny, tmp_path):
    """Registry coverage: each family's tiny checkpoint exports with the defaults, loads in the runtime as
    its family, answers `edgekit infer` and gives `edgekit bench --json` rows."""
    from edgekit.runtime import load

    onnx_path = tmp_path / f"{tiny['family']}.onnx"
    r = run_cli("export", tiny["summary"]["checkpoint"], "-o", onnx_path, "--threads", 1, "--quiet")
    assert r.exit_code == 0, r.output
    assert load(onnx_path, threads=1).family == tiny["family"]
    r = run_cli("infer", onnx_path, *_infer_input(tiny["family"], tmp_path), "--threads", 1)
    assert r.exit_code == 0 and r.stdout.strip(), r.output
    r = run_cli("bench", onnx_path, "--json")
    assert r.exit_code in (0, 3), r.output  # 3: a tiny model may break a budget; the rows are what is checked
    bench = json.loads(r.stdout)
    assert bench["family"] == tiny["family"] and bench["rows"]
