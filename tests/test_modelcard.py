"""The model-file format (docs/model-file.md) as ModelCard reads it: the shipped file, round trips, refusals."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnx
import pytest

from edgekit.errors import ModelFileError
from edgekit.runtime import load
from edgekit.runtime.modelcard import FORMAT_VERSION, META_KEY, ModelCard

SOMA = Path(__file__).resolve().parents[1] / "examples" / "reference" / "soma-stdlib.onnx"


@pytest.fixture(scope="module")
def soma_meta() -> dict:
    m = onnx.load(str(SOMA))
    return json.loads({p.key: p.value for p in m.metadata_props}[META_KEY])


def test_the_shipped_file_reads_as_a_typed_card(soma_meta):
    card = ModelCard.from_json(json.dumps(soma_meta), path="soma")
    assert card.format == FORMAT_VERSION == 1 and card.family == "gpt"
    assert card.block_size == 128 and card.vocab_size == 576 and card.eot_id == 575 and card.window_keep == 96
    assert card.tokenizer["kind"] == "bpe" and card.quantization.scheme == "int8-nbits"
    assert card.deploy.target == "cpu"  # written before the deploy key: a cpu file
    assert card.source.sha256 == soma_meta["source_sha256"] and card.source.iteration == 12000
    assert card.generation.max_new_tokens == 64 and card.generation.temperature == 0.0
    assert ModelCard.from_dict(card.to_dict()) == card
    assert ModelCard.from_json(card.to_json()) == card


def test_the_card_is_frozen(soma_meta):
    card = ModelCard.from_dict(soma_meta)
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.block_size = 1
    with pytest.raises(TypeError):
        card.config["n_layer"] = 99
    with pytest.raises(TypeError):
        card.verification["final"]["greedy_agreement"] = 1.0


def test_the_runtime_reads_window_keep_from_the_file(soma_meta, tmp_path):
    """export writes window.keep; the runtime uses it (it no longer recomputes its own)."""
    m = onnx.load(str(SOMA))
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, {META_KEY: json.dumps({**soma_meta, "window": {"keep": 40}})})
    onnx.save(m, tmp_path / "keep40.onnx")
    lm = load(tmp_path / "keep40.onnx", threads=1)
    assert lm.card.window_keep == 40
    g = lm.generate("def f(x):\n", max_new_tokens=200)
    ref = load(SOMA, threads=1).generate("def f(x):\n", max_new_tokens=200)
    # a slide keeps 40 tokens instead of 96: it frees 88 positions, not 32, so fewer slides
    assert 1 <= g.window_slides < ref.window_slides
    assert g.token_ids[:100] == ref.token_ids[:100]


REFUSED = [
    ("not-object", lambda m: [1, 2], "must be a JSON object"),
    ("no-format", lambda m: {k: v for k, v in m.items() if k != "format"}, "lacks format"),
    ("future-format", lambda m: {**m, "format": 2}, "format 2 is not supported"),
    ("string-format", lambda m: {**m, "format": "1"}, "format '1' is not supported"),
    ("no-family", lambda m: {k: v for k, v in m.items() if k != "family"}, "lacks family"),
    ("family-not-string", lambda m: {**m, "family": 3}, "'family' must be a str"),
    ("config-not-object", lambda m: {**m, "config": []}, "'config' must be an object"),
    ("config-missing-n-head", lambda m: {**m, "config": {k: v for k, v in m["config"].items() if k != "n_head"}},
     "config.n_head must be a positive integer"),
    ("config-negative", lambda m: {**m, "config": {**m["config"], "n_layer": -1}}, "config.n_layer must be"),
    ("no-tokenizer", lambda m: {k: v for k, v in m.items() if k != "tokenizer"}, "lacks 'tokenizer'"),
    ("tokenizer-no-kind", lambda m: {**m, "tokenizer": {"name": "x"}}, "'tokenizer' must be an object with a 'kind'"),
    ("vocab-string", lambda m: {**m, "vocab_size": "576"}, "'vocab_size' must be a int"),
    ("keep-too-big", lambda m: {**m, "window": {"keep": 1000}}, "window.keep must be from 1 to block_size 128"),
    ("keep-zero", lambda m: {**m, "window": {"keep": 0}}, "window.keep must be from 1"),
    ("eot-outside", lambda m: {**m, "special_tokens": {"eot": 9999}}, "special_tokens.eot 9999 is outside"),
    ("temperature-string", lambda m: {**m, "generation": {"temperature": "hot"}}, "'temperature' must be a float"),
    ("scheme-not-string", lambda m: {**m, "quantization": {"scheme": 4}}, "'scheme' must be a str"),
    ("unknown-target", lambda m: {**m, "deploy": {"target": "gpu"}}, "deploy.target 'gpu' is not known"),
    ("sha-not-string", lambda m: {**m, "source_sha256": 12}, "'source_sha256' must be a str"),
]


@pytest.mark.parametrize("case, mutate, message", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_reader_refuses(soma_meta, case, mutate, message):
    with pytest.raises(ModelFileError) as e:
        ModelCard.from_json(json.dumps(mutate(soma_meta)), path="bad.onnx")
    assert str(e.value).startswith("bad.onnx") and message in str(e.value)


def test_missing_and_non_json_entries_are_refused():
    with pytest.raises(ModelFileError, match="has no edgekit metadata"):
        ModelCard.from_json(None, path="plain.onnx")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        ModelCard.from_json('{"format": 1', path="cut.onnx")


def test_unknown_keys_are_kept_and_written_back(soma_meta):
    card = ModelCard.from_dict({**soma_meta, "x_new_key": {"a": 1}})
    assert card.family_fields["x_new_key"]["a"] == 1
    assert card.to_dict()["x_new_key"] == {"a": 1}


def test_a_web_target_round_trips(soma_meta):
    card = ModelCard.from_dict({**soma_meta, "deploy": {"target": "web", "numerics": "onnxruntime-web wasm"}})
    assert card.deploy.target == "web" and ModelCard.from_dict(card.to_dict()).deploy == card.deploy
