"""Bad input, table-driven: one line `edgekit: error: ...`, a non-zero exit, no traceback, nothing written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest
import torch

from conftest import Payload, run_cli


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_gpt, tiny_soma):
    d = tmp_path_factory.mktemp("bad")
    real = tiny_gpt["ckpt"].read_bytes()
    (d / "empty.pt").write_bytes(b"")
    (d / "truncated.pt").write_bytes(real[: len(real) // 2])
    (d / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    with zipfile.ZipFile(d / "zip.pt", "w") as z:
        z.writestr("notes.txt", "this is a zip of something else")
    ck = torch.load(tiny_gpt["ckpt"], weights_only=True)
    torch.save({k: v for k, v in ck.items() if k != "model_args"}, d / "no_args.pt")
    torch.save({**ck, "model_args": {**ck["model_args"], "n_embd": 48}}, d / "wrong_args.pt")
    torch.save({**ck, "model_args": "six layers"}, d / "str_args.pt")
    nan = {k: v.clone() for k, v in ck["model"].items()}
    nan["transformer.h.0.attn.c_attn.weight"][0, 0] = float("nan")
    torch.save({**ck, "model": nan}, d / "nan.pt")
    torch.save({**ck, "family": "transformerxl"}, d / "family.pt")
    torch.save([1, 2, 3], d / "list.pt")
    real_onnx = tiny_soma["onnx"].read_bytes()
    (d / "empty.onnx").write_bytes(b"")
    (d / "random.onnx").write_bytes(np.random.default_rng(1).bytes(4096))
    (d / "truncated.onnx").write_bytes(real_onnx[: len(real_onnx) // 3])
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    plain = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                                   opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(plain, d / "plain.onnx")
    m = onnx.load(str(tiny_soma["onnx"]))
    meta = {p.key: p.value for p in m.metadata_props}

    def with_meta(name, value):
        mm = onnx.ModelProto()
        mm.CopyFrom(m)
        del mm.metadata_props[:]
        onnx.helper.set_model_props(mm, {"edgekit": value})
        onnx.save(mm, d / name)

    with_meta("tampered.onnx", meta["edgekit"][:-20])
    good = json.loads(meta["edgekit"])
    with_meta("family.onnx", json.dumps({**good, "family": "lstm9000"}))
    with_meta("noconfig.onnx", json.dumps({k: v for k, v in good.items() if k != "config"}))
    with_meta("badtok.onnx", json.dumps({**good, "tokenizer": {"kind": "sentencepiece"}}))
    with_meta("format.onnx", json.dumps({**good, "format": 99}))
    (d / "binary_data").mkdir()
    (d / "binary_data" / "blob.bin").write_bytes(bytes(range(256)) * 64)
    (d / "empty_data").mkdir()
    (d / "adir.onnx").mkdir()
    return {"dir": d, "ckpt": tiny_gpt["ckpt"], "soma": tiny_soma["onnx"]}


def _p(files, name):
    return str(files["dir"] / name)


# (case id, argv builder, expected exit code, expected text in the error line)
CASES = [
    ("export-missing", lambda f: ["export", _p(f, "nope.pt")], 1, "does not exist"),
    ("export-empty", lambda f: ["export", _p(f, "empty.pt")], 1, "is empty"),
    ("export-truncated", lambda f: ["export", _p(f, "truncated.pt")], 1, "not a readable PyTorch checkpoint"),
    ("export-random-bytes", lambda f: ["export", _p(f, "random.pt")], 1, "not a readable PyTorch checkpoint"),
    ("export-zip-of-something-else", lambda f: ["export", _p(f, "zip.pt")], 1, "not a readable PyTorch checkpoint"),
    ("export-list-not-dict", lambda f: ["export", _p(f, "list.pt")], 1, "expected a dict with 'model'"),
    ("export-no-model-args", lambda f: ["export", _p(f, "no_args.pt")], 1, "no 'model_args'"),
    ("export-wrong-model-args", lambda f: ["export", _p(f, "wrong_args.pt")], 1, "do not match"),
    ("export-string-model-args", lambda f: ["export", _p(f, "str_args.pt")], 1, "no 'model_args' dict"),
    ("export-nan-weights", lambda f: ["export", _p(f, "nan.pt")], 1, "NaN"),
    ("export-unknown-family", lambda f: ["export", _p(f, "family.pt")], 1, "family 'transformerxl'; known: gpt"),
    ("export-folder-as-input", lambda f: ["export", str(f["dir"])], 1, "is a folder"),
    ("export-out-dir-missing", lambda f: ["export", str(f["ckpt"]), "-o", _p(f, "no/such/dir/x.onnx")], 1, "does not exist"),
    ("export-out-is-folder", lambda f: ["export", str(f["ckpt"]), "-o", _p(f, "adir.onnx")], 1, "is a folder"),
    ("export-out-equals-input", lambda f: ["export", str(f["ckpt"]), "-o", str(f["ckpt"])], 1, "is the input file"),
    ("export-bad-quant", lambda f: ["export", str(f["ckpt"]), "--quant", "int3"], 2, "'int3' is not one of"),
    ("export-threads-zero", lambda f: ["export", str(f["ckpt"]), "--threads", "0"], 2, "must be at least 1"),
    ("export-meta-missing", lambda f: ["export", str(f["ckpt"]), "--meta", _p(f, "meta.pkl"), "-o", _p(f, "m.onnx")], 1,
     "does not exist"),
    ("infer-missing-model", lambda f: ["infer", _p(f, "nope.onnx"), "x"], 1, "does not exist"),
    ("infer-empty-model", lambda f: ["infer", _p(f, "empty.onnx"), "x"], 1, "is empty"),
    ("infer-random-model", lambda f: ["infer", _p(f, "random.onnx"), "x"], 1, "not a loadable ONNX model"),
    ("infer-truncated-model", lambda f: ["infer", _p(f, "truncated.onnx"), "x"], 1, "not a loadable ONNX model"),
    ("infer-plain-onnx", lambda f: ["infer", _p(f, "plain.onnx"), "x"], 1, "has no edgekit metadata"),
    ("infer-tampered-metadata", lambda f: ["infer", _p(f, "tampered.onnx"), "x"], 1, "not valid JSON"),
    ("infer-unknown-family", lambda f: ["infer", _p(f, "family.onnx"), "x"], 1, "family 'lstm9000' is not known"),
    ("infer-metadata-no-config", lambda f: ["infer", _p(f, "noconfig.onnx"), "x"], 1, "lacks config"),
    ("infer-unknown-tokenizer", lambda f: ["infer", _p(f, "badtok.onnx"), "x"], 1, "unknown tokenizer kind"),
    ("infer-future-format", lambda f: ["infer", _p(f, "format.onnx"), "x"], 1, "format 99 is not supported"),
    ("infer-folder-as-model", lambda f: ["infer", _p(f, "adir.onnx"), "x"], 1, "is a folder"),
    ("infer-empty-prompt", lambda f: ["infer", str(f["soma"]), ""], 1, "prompt is empty"),
    ("infer-no-prompt", lambda f: ["infer", str(f["soma"])], 1, "exactly one prompt"),
    ("infer-two-prompts", lambda f: ["infer", str(f["soma"]), "a", "b"], 1, "exactly one prompt"),
    ("infer-max-new-tokens-zero", lambda f: ["infer", str(f["soma"]), "x", "--max-new-tokens", "0"], 1, "max_new_tokens"),
    ("infer-max-new-tokens-negative", lambda f: ["infer", str(f["soma"]), "x", "--max-new-tokens", "-3"], 1, "max_new_tokens"),
    ("infer-max-new-tokens-huge", lambda f: ["infer", str(f["soma"]), "x", "--max-new-tokens", "999999999"], 1,
     "max_new_tokens"),
    ("infer-max-new-tokens-text", lambda f: ["infer", str(f["soma"]), "x", "--max-new-tokens", "many"], 2, "not a valid integer"),
    ("infer-temperature-negative", lambda f: ["infer", str(f["soma"]), "x", "--temperature", "-1"], 1, "temperature"),
    ("infer-temperature-nan", lambda f: ["infer", str(f["soma"]), "x", "--temperature", "nan"], 1, "temperature"),
    ("infer-top-k-zero", lambda f: ["infer", str(f["soma"]), "x", "--top-k", "0", "--temperature", "1"], 1, "top_k"),
    ("infer-top-k-above-vocab", lambda f: ["infer", str(f["soma"]), "x", "--top-k", "100000", "--temperature", "1"], 1, "top_k"),
    ("infer-top-p-above-one", lambda f: ["infer", str(f["soma"]), "x", "--top-p", "1.5", "--temperature", "1"], 1, "top_p"),
    ("infer-top-p-zero", lambda f: ["infer", str(f["soma"]), "x", "--top-p", "0", "--temperature", "1"], 1, "top_p"),
    ("infer-threads-zero", lambda f: ["infer", str(f["soma"]), "x", "--threads", "0"], 2, "must be at least 1"),
    ("train-unknown-preset", lambda f: ["train", "phase9"], 1, "unknown preset 'phase9'; known: phase0"),
    ("train-data-missing", lambda f: ["train", "phase1", "--data", _p(f, "nothing"), "--out", _p(f, "t1")], 1,
     "does not exist"),
    ("train-data-binary", lambda f: ["train", "phase1", "--data", _p(f, "binary_data"), "--out", _p(f, "t2")], 1,
     "no readable UTF-8 text"),
    ("train-data-empty-folder", lambda f: ["train", "phase1", "--data", _p(f, "empty_data"), "--out", _p(f, "t3")], 1,
     "has no files"),
    ("train-tokens-zero", lambda f: ["train", "phase1", "--tokens", "0"], 2, "must be at least 2"),
    ("train-batch-size-zero", lambda f: ["train", "phase1", "--batch-size", "0"], 2, "must be at least 1"),
    ("train-lr-huge", lambda f: ["train", "phase1", "--lr", "5"], 2, "must be in (0, 1)"),
    ("train-device-unknown", lambda f: ["train", "phase1", "--device", "tpu"], 2, "must be cpu or cuda"),
    ("train-resume-nothing", lambda f: ["train", "phase1", "--resume", "--out", _p(f, "t4")], 1, "--resume: no"),
    ("train-set-malformed", lambda f: ["train", "phase1", "--set", "novalue"], 2, "expected KEY=VALUE"),
    ("inspect-missing", lambda f: ["inspect", _p(f, "nope.onnx")], 1, "does not exist"),
    ("inspect-plain-onnx", lambda f: ["inspect", _p(f, "plain.onnx")], 1, "has no edgekit metadata"),
    ("inspect-random", lambda f: ["inspect", _p(f, "random.onnx")], 1, "is not an ONNX model"),
    ("bench-missing-model", lambda f: ["bench", _p(f, "nope.onnx")], 1, "does not exist"),
    ("bench-missing-budget-file", lambda f: ["bench", str(f["soma"]), "--budget", _p(f, "nope.toml")], 1,
     "budget file"),
    ("presets-unknown-option", lambda f: ["presets", "--colour"], 2, "No such option"),
    ("unknown-command", lambda f: ["deploy"], 2, "No such command"),
]


@pytest.mark.parametrize("case,argv,code,text", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(files, case, argv, code, text):
    before = set(os.listdir(files["dir"]))
    r = run_cli(*argv(files), catch=False)
    assert r.exit_code == code, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: "), r.stderr
    assert text in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    created = set(os.listdir(files["dir"])) - before
    assert not created, f"left behind {created}"


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


def test_invalid_utf8_prompt_from_stdin_is_refused(files):
    r = subprocess.run([sys.executable, "-m", "edgekit.cli", "infer", str(files["soma"]), "-"],
                       input=b"def \xff\xfe get", capture_output=True)
    assert r.returncode == 1
    assert r.stderr.decode().startswith("edgekit: error: stdin is not valid UTF-8") and b"Traceback" not in r.stderr


def test_astral_plane_prompt_works(files):
    r = run_cli("infer", files["soma"], "# 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 😀 ", "--max-new-tokens", 5, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["prompt_ids"]


def test_prompt_longer_than_block_size_slides_instead_of_failing(files):
    r = run_cli("infer", files["soma"], "x = 1\n" * 400, "--max-new-tokens", 5, "--json")
    assert r.exit_code == 0, r.stderr
    assert len(json.loads(r.stdout)["prompt_ids"]) > 128


def test_debug_flag_shows_the_traceback(files):
    env = {**os.environ, "EDGEKIT_DEBUG": "1"}
    r = subprocess.run([sys.executable, "-m", "edgekit.cli", "export", str(files["dir"] / "random.pt")],
                       capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "Traceback" in r.stderr



@pytest.mark.parametrize("command", ["export", "train --resume", "export --meta"])
def test_payload_checkpoint_never_runs_through_any_command(tmp_path, command):
    """Every command that reads a checkpoint or a pickle refuses one that would run code when unpickled."""
    import pickle

    marker = tmp_path / "pwned"
    evil = {"model": {}, "model_args": {"n_layer": 1}, "payload": Payload(str(marker))}
    if command == "export":
        torch.save(evil, tmp_path / "evil.pt")
        r = run_cli("export", tmp_path / "evil.pt", "-o", tmp_path / "x.onnx", catch=False)
    elif command == "train --resume":
        (tmp_path / "run").mkdir()
        torch.save(evil, tmp_path / "run" / "phase1.last.pt")
        r = run_cli("train", "phase1", "--out", tmp_path / "run", "--resume", catch=False)
    else:
        torch.save({"model": {"w": torch.zeros(1)}, "model_args": {"n_layer": 1}}, tmp_path / "ok.pt")
        pickle.dump(Payload(str(marker)), open(tmp_path / "meta.pkl", "wb"))
        r = run_cli("export", tmp_path / "ok.pt", "--meta", tmp_path / "meta.pkl", "-o", tmp_path / "x.onnx", catch=False)
    assert r.exit_code == 1 and "refusing" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()
