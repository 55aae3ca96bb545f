"""One options object: `edgekit infer`'s flags, the Python API and `edgekit serve`'s request body accept and
refuse the same values, because all three read ``SamplingOptions`` (its defaults, ranges and help)."""
from __future__ import annotations

import json
import math
import pathlib
from dataclasses import fields

import pytest

from edgekit.errors import UsageError
from edgekit.runtime import load
from edgekit.runtime.gpt_sampling import REPEAT_LAST_N_LIMIT, SEED_LIMIT, SamplingOptions, cli_flag

from conftest import run_cli
from serving import Server

SOMA = pathlib.Path(__file__).resolve().parent.parent / "examples" / "reference" / "soma-stdlib.onnx"
VOCAB = 576  # soma's
TABLE = [  # (field, value, accepted)
    ("max_new_tokens", 1, True), ("max_new_tokens", 0, False), ("max_new_tokens", -3, False),
    ("max_new_tokens", 100_001, False),
    ("temperature", 0, True), ("temperature", 0.001, True), ("temperature", 100, True), ("temperature", 0.0005, False),
    ("temperature", 100.5, False), ("temperature", -1, False), ("temperature", math.nan, False),
    ("top_k", 1, True), ("top_k", VOCAB, True), ("top_k", 0, False), ("top_k", VOCAB + 1, False),
    ("top_p", 1, True), ("top_p", 0.5, True), ("top_p", 0, False), ("top_p", 1.01, False),
    ("seed", 0, True), ("seed", SEED_LIMIT, True), ("seed", -1, False), ("seed", SEED_LIMIT + 1, False),
    ("repeat_penalty", 1.1, True), ("repeat_penalty", 100, True), ("repeat_penalty", 0, False),
    ("repeat_penalty", 101, False),
    ("repeat_last_n", 0, True), ("repeat_last_n", REPEAT_LAST_N_LIMIT, True), ("repeat_last_n", -1, False),
    ("repeat_last_n", REPEAT_LAST_N_LIMIT + 1, False), ("repeat_last_n", 20_000_000, False),
    ("window", "exact", True), ("window", "wide", False),
    ("stop", ")", True), ("stop", "", False),
]
IDS = [f"{f}={v}" for f, v, _ in TABLE]


def _extra(field: str) -> dict:
    """Companion settings that make the field matter (sampling for top_k/top_p/seed, the penalty's window)."""
    return {"temperature": 0.8} if field in ("top_k", "top_p", "seed") else {}


@pytest.fixture(scope="module")
def lm():
    return load(SOMA, threads=1)


@pytest.fixture(scope="module")
def server():
    with Server(SOMA) as s:
        yield s


@pytest.mark.parametrize("field,value,ok", TABLE, ids=IDS)
def test_cli_python_and_http_accept_and_refuse_the_same_values(lm, server, field, value, ok):
    kw = {"max_new_tokens": 2, **_extra(field), field: value}
    # Python API
    if ok:
        assert lm.generate("def ", **kw).token_ids is not None
    else:
        with pytest.raises(UsageError, match=f"^{field} must be"):
            lm.generate("def ", **kw)
    # CLI
    args = [a for k, v in kw.items() for a in (cli_flag(k), str(v))]
    r = run_cli("infer", SOMA, "def ", *args, "--json")
    if ok:
        assert r.exit_code == 0, r.output
        json.loads(r.stdout)
    else:
        assert r.exit_code == 1 and r.stderr.startswith(f"edgekit: error: {field} must be"), r.output
    # HTTP (JSON's NaN is written raw: json.dumps writes it as NaN too)
    http = {v: k for k, v in SamplingOptions.http_names().items()}
    body = {"prompt": "def ", **{http[k]: v for k, v in kw.items()}}
    r = server.http.post("/v1/completions", content=json.dumps(body), headers={"Content-Type": "application/json"})
    if ok:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 400 and r.json()["error"]["param"] == http[field], r.text


def test_every_option_has_one_default_range_help_and_name_in_each_front_end():
    from edgekit.cli import infer, serve

    flags = {o.name for o in infer.params} & {o.name for o in serve.params}
    for f in fields(SamplingOptions):
        assert f.metadata["help"] and f.metadata["valid"], f.name
        assert f.name in flags, f"{f.name} is not a flag of both infer and serve"
    assert SamplingOptions.http_names()["max_tokens"] == "max_new_tokens"
    SamplingOptions().validate(VOCAB)  # the defaults are valid


def test_options_object_and_keywords(lm):
    opts = SamplingOptions(max_new_tokens=6, temperature=0.8, top_k=40, seed=2)
    assert lm.generate("def ", options=opts).token_ids == lm.generate("def ", max_new_tokens=6, temperature=0.8,
                                                                      top_k=40, seed=2).token_ids
    assert lm.options(opts, seed=3).seed == 3 and lm.options(opts, seed=None).seed == 2
    with pytest.raises(UsageError, match="unknown generation option 'temprature'"):
        lm.generate("def ", temprature=1)
