"""bytecnn end to end: presets, data split, Jabberwocky Protocol, tiny training, export parity, scorer, infer."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgekit.errors import DataError, UsageError
from edgekit.export.bytecnn import INT8_TOLERANCE
from edgekit.models import bytecnn
from edgekit.train import wordfreq_data as wd

from conftest import run_cli

EXACT_PARAMS = {"cnn-v2": 32_993, "nano-cnn": 6_753}


@pytest.fixture(scope="module")
def tiny_nano(tmp_path_factory):
    """nano-cnn on the 3,000 most frequent wordfreq words, 60 steps, exported with the default (auto) scheme."""
    out = tmp_path_factory.mktemp("bytecnn")
    r = run_cli("train", "nano-cnn", "--out", out, "--tokens", 3000, "--max-iters", 60, "--eval-interval", 20,
                "--batch-size", 128, "--set", "threads=1", "--quiet", "--json")
    assert r.exit_code == 0, r.output
    onnx_path = out / "nano.onnx"
    e = run_cli("export", out / "nano-cnn.pt", "-o", onnx_path, "--quiet", "--json")
    assert e.exit_code == 0, e.output
    return {"dir": out, "ckpt": out / "nano-cnn.pt", "onnx": onnx_path, "summary": json.loads(r.stdout),
            "report": json.loads(e.stdout)}


def _tsv(path, rows):
    path.write_text("".join(f"{w}\t{f}\n" for w, f in rows), encoding="utf-8")
    return path


def _fake_words(n, seed=0):
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = {"".join(rng.choice(letters, size=int(rng.integers(3, 10)))) for _ in range(n)}
    return sorted(words)


# --- presets and model ----------------------------------------------------------------------------
def test_presets_exact_counts_and_notes():
    for name, p in bytecnn.PRESETS.items():
        assert p.name == name and p.family == "bytecnn" and p.note.startswith("notes 000")
        assert bytecnn.num_params(p) == EXACT_PARAMS[name]
    assert bytecnn.PRESETS["nano-cnn"].model.emb_dim == 16 and 2 in bytecnn.PRESETS["nano-cnn"].model.strides
    r = run_cli("presets", "--json")
    assert r.exit_code == 0, r.output
    listed = {row["preset"]: row for row in json.loads(r.stdout)}
    assert {k: listed[k]["params"] for k in EXACT_PARAMS} == EXACT_PARAMS
    assert listed["nano-cnn"]["family"] == "bytecnn"


def test_model_scores_in_unit_interval_and_encoding():
    torch.manual_seed(0)
    model = bytecnn.build(bytecnn.preset_config(bytecnn.PRESETS["cnn-v2"])).eval()
    x = bytecnn.encode_words(["the", "naïve", "x" * 40], max_len=24)
    assert x.shape == (3, 24) and x.dtype == np.int64
    assert list(x[1, :7]) == list("naïve".encode()) + [0]  # UTF-8 bytes, zero padding
    assert (x[2] == ord("x")).all()  # cut at max_len
    with torch.no_grad():
        y = model(torch.from_numpy(x))
    assert y.shape == (3,) and bool(((y > 0) & (y < 1)).all())
    with pytest.raises(ValueError, match="unknown bytecnn config keys"):
        bytecnn.build({"emb": 3})


# --- data -----------------------------------------------------------------------------------------
def test_split_is_deterministic_disjoint_and_proportioned(tmp_path):
    words = _fake_words(20000)
    rows = [(w, 1.0 / (i + 1)) for i, w in enumerate(words)]
    data = wd.load_words(_tsv(tmp_path / "a.tsv", rows))
    s1 = wd.split_indices(data)
    shuffled = wd.load_words(_tsv(tmp_path / "b.tsv", rows[::-1]))  # same words, other file order
    s2 = wd.split_indices(shuffled)
    for name in ("train", "val", "test"):
        assert {data.words[i] for i in getattr(s1, name)} == {shuffled.words[i] for i in getattr(s2, name)}
    sets = [set(s1.train), set(s1.val), set(s1.test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(map(len, sets)) == len(data)
    assert 0.08 < len(s1.test) / len(data) < 0.12 and 0.08 < len(s1.val) / len(data) < 0.12
    # pinned: a change of salt or hash would silently move words between train and test
    assert [wd.split_of(w) for w in ("the", "and", "to", "in", "café")] == ["train", "train", "test", "train", "train"]


def test_icf_target_and_filtering(tmp_path):
    path = _tsv(tmp_path / "f.tsv", [("The", 1000), ("cat", 100), ("u.s", 50), ("00", 40), ("café", 10),
                                     ("don't", 10), ("brillig", 5), ("chortle", 5), ("zyx", 1)]
                + [(w, 2) for w in _fake_words(30, seed=1)])
    data = wd.load_words(path)
    assert data.words[:2] == ["the", "cat"] and "café" in data.words and "don't" in data.words
    assert "u.s" not in data.words and "00" not in data.words
    assert "brillig" not in data.words and "chortle" not in data.words  # protocol word and its inflection
    assert set(data.excluded) == {"brillig", "chortle"}
    assert data.icf[0] == 0.0 and data.icf[data.words.index("zyx")] == 1.0
    assert np.all(np.diff(data.icf) >= 0)
    assert wd.load_words(path, limit=20).words == data.words[:20]


@pytest.mark.parametrize("content, message", [
    ("the\t1\tx\n" * 30, "expected 'word<TAB>frequency'"),
    ("the\tmany\n", "frequency 'many' is not a number"),
    ("the\t-3\n", "must be a positive finite number"),
    ("the\t1\ncat\t2\n", "only 2 usable words"),
])
def test_bad_tsv_raises_data_error(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        wd.load_words(path)


def test_missing_data_file_is_one_clear_line(tmp_path):
    r = run_cli("train", "nano-cnn", "--out", tmp_path, "--data", tmp_path / "nope.tsv", "--quiet")
    assert r.exit_code == 1
    assert r.stderr.strip() == f"edgekit: error: data file {str(tmp_path / 'nope.tsv')!r} does not exist; " \
                               "give a word<TAB>frequency .tsv file"


def test_spearman_matches_definition():
    assert wd.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert wd.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert list(wd.rankdata([3, 1, 3, 2])) == [3.5, 1.0, 3.5, 2.0]  # ties share the average rank
    # average ranks [1, 2.5, 2.5, 4, 5] and [2, 1, 3.5, 3.5, 5]: Pearson = 7.25 / 9.5
    assert wd.spearman([1, 2, 2, 3, 5], [2, 1, 4, 4, 9]) == pytest.approx(7.25 / 9.5)


# --- the Jabberwocky Protocol ---------------------------------------------------------------------
def test_jabberwocky_definition():
    carroll = {"brillig", "slithy", "toves", "mimsy", "borogoves", "outgrabe", "frumious", "bandersnatch", "vorpal",
               "manxome", "tulgey", "uffish", "burbled", "galumphing", "beamish", "chortled"}
    assert carroll <= set(wd.JABBERWOCKY)
    assert len(wd.INVENTED) >= 10 and not set(wd.INVENTED) & set(wd.JABBERWOCKY)
    assert wd.PROTOCOL_TOP_N == 1000 and wd.PROTOCOL_PERCENTILE == 0.9 and 0 < wd.PROTOCOL_MARGIN <= 0.2
    import wordfreq

    assert [w for w in wd.INVENTED if wordfreq.zipf_frequency(w, "en", wordlist="large") > 0] == []


def test_jabberwocky_scoring_logic(tmp_path):
    words = _fake_words(3000, seed=2)
    data = wd.load_words(_tsv(tmp_path / "j.tsv", [(w, 1.0 / (i + 1) ** 1.1) for i, w in enumerate(words)]))
    rank = {w: i for i, w in enumerate(data.words)}

    def oracle(ws):  # true ICF for known words, 1.0 for unknown ones: every nonsense word passes
        return np.array([data.icf[rank[w]] if w in rank else 1.0 for w in ws])

    res = wd.jabberwocky(oracle, data)
    assert res["passed"] and res["words_passed"] == len(wd.PROTOCOL_WORDS) and res["mean_ok"]
    assert res["rare_words"] > 0 and res["rows"][0]["word"] == "brillig" and res["rows"][0]["pass"]

    def fooled(ws):  # knows every real word, takes nonsense for the commonest words
        return np.array([data.icf[rank[w]] if w in rank else 0.0 for w in ws])

    res = wd.jabberwocky(fooled, data)
    assert not res["passed"] and res["words_passed"] == 0 and not res["mean_ok"]


# --- non-words and rank reports -------------------------------------------------------------------
@pytest.fixture(scope="module")
def wordfreq_top():
    data = wd.load_words(limit=20_000)
    return data, wd.split_indices(data)


def test_nonwords_are_absent_from_the_whole_list_and_deterministic(wordfreq_top):
    data, split = wordfreq_top
    made = wd.nonwords(data, split, 3000, seed=3)
    assert len(made) == len(set(made)) == 3000 and made == wd.nonwords(data, split, 3000, seed=3)
    assert made != wd.nonwords(data, split, 3000, seed=4)
    listed = wd.listed_words(data)  # every wordfreq entry, not only the 20k kept words
    assert len(listed) > 300_000 and not [w for w in made if w in listed]
    assert not [w for w in made if wd.is_protocol_word(w) or not wd.is_latin_word(w) or len(w) < 3]
    assert not set(made) & set(wd.PROTOCOL_WORDS)


def test_nonwords_can_follow_the_top_words_lengths_and_name_their_sources(wordfreq_top):
    """len_top: lengths like the 1,000 most frequent words (short ones); with_sources: the training word edited."""
    data, split = wordfreq_top
    plain = wd.nonwords(data, split, 3000, seed=3)
    made, src = wd.nonwords(data, split, 3000, seed=3, len_top=1000, with_sources=True)
    assert made == wd.nonwords(data, split, 3000, seed=3, len_top=1000) and len(src) == len(made) == len(set(made))
    short = lambda words: np.mean([len(w) <= 5 for w in words])  # noqa: E731
    top_short = short([w for w in data.words[:1000] if len(w) >= 3])  # 0.61; 3-letter non-words are scarce
    assert short(plain) + 0.2 < short(made) <= top_short, (short(plain), short(made), top_short)
    train = set(split.train.tolist())
    edits = [(w, data.words[i]) for w, i in zip(made, src) if i >= 0]
    assert 1000 < len(edits) < 2000 and all(i in train for i in src if i >= 0)
    assert all(len(w) == len(o) and sum(a != b for a, b in zip(w, o)) == 1 for w, o in edits)  # mome <- home


def test_ngram_nonwords_come_from_the_training_split_only(wordfreq_top):
    """Every 4-gram of an n-gram non-word (with start and end marks) occurs in a training word."""
    data, split = wordfreq_top
    made = wd.nonwords(data, split, 2000, seed=5, edit_share=0.0)

    def grams(words):
        out = set()
        for w in words:
            b = b"\0\0\0" + w.encode() + b"\0"
            out.update(b[i:i + 4] for i in range(len(b) - 3))
        return out

    train_grams = grams(data.words[i] for i in split.train)
    held_out_only = grams(data.words[i] for i in np.r_[split.val, split.test]) - train_grams
    assert held_out_only and grams(made) <= train_grams  # held-out words have 4-grams training lacks


def test_rank_report_three_ways():
    data = wd.load_words()
    split = wd.split_indices(data)
    samples = wd.stratified_samples(data, split)
    assert len(samples) == wd.STRATIFIED_DRAWS and not np.array_equal(samples[0], samples[1])
    assert all(np.array_equal(a, b) for a, b in zip(samples, wd.stratified_samples(data, split)))
    for strat in samples:
        assert set(strat) <= set(split.test) and strat.max() < 100_000
        assert np.bincount(wd.zipf_bands(data, strat)).tolist() == [150, 150, 150, 125]
    truth = dict(zip(data.words, data.icf))
    r = wd.rank_report(lambda ws: np.array([truth[w] for w in ws]), data, split)
    assert r["all"] == r["stratified"] == r["top50k"] == pytest.approx(1.0)
    assert r["all_words"] == len(split.test) and r["stratified_words"] == [150, 150, 150, 125]
    length = wd.rank_report(lambda ws: np.array([len(w) for w in ws], float), data, split)
    assert length["all"] < 0.1 < length["stratified"]  # word length says little about the tail, more across bands


# --- training -------------------------------------------------------------------------------------
def test_tiny_training_writes_checkpoint_log_and_curves(tiny_nano):
    s = tiny_nano["summary"]
    assert s["checkpoint"].endswith("nano-cnn.pt") and s["words"] == 3000 and s["params"] == EXACT_PARAMS["nano-cnn"]
    assert -1 <= s["test_spearman"] <= 1 and -1 <= s["best_val_spearman"] <= 1
    assert (tiny_nano["dir"] / "train_log.json").is_file() and (tiny_nano["dir"] / "curves.png").stat().st_size > 1000
    log = json.loads((tiny_nano["dir"] / "train_log.json").read_text())
    assert log["history"]["steps"] == [20, 40, 60] and len(log["jabberwocky"]["rows"]) == len(wd.PROTOCOL_WORDS)
    from edgekit.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_nano["ckpt"])
    assert ckpt.family == "bytecnn" and ckpt.tokenizer is None and ckpt.extra["best_val_spearman"] == s["best_val_spearman"]
    assert ckpt.config["data_recipe"]["words"] == 3000


def test_shipped_nano_checkpoint_is_the_default_recipe():
    """The benchmark gates' reference nano-cnn was trained with today's preset defaults (retrain it if they change)."""
    import dataclasses
    from pathlib import Path

    from edgekit.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(Path(__file__).resolve().parent.parent / "examples" / "reference" / "nano-cnn-wordfreq.pt")
    preset = bytecnn.PRESETS["nano-cnn"]
    assert ckpt.family == "bytecnn" and ckpt.model_args == bytecnn.preset_config(preset)
    fields = bytecnn.TrainDefaults.__dataclass_fields__  # a field added after training ran at its default
    assert {k: ckpt.config.get(k, fields[k].default) for k in fields} == dataclasses.asdict(preset.train)
    assert ckpt.config["data"] is None and ckpt.config["data_recipe"]["words"] == 311_114 and preset.train.nonwords > 0


def test_train_options_are_checked(tmp_path):
    r = run_cli("train", "nano-cnn", "--out", tmp_path, "--set", "colour=blue", "--quiet")
    assert r.exit_code == 1 and "--set colour: not a bytecnn setting; known: max_iters, batch_size, lr" in r.stderr
    r = run_cli("train", "nano-cnn", "--out", tmp_path, "--resume", "--quiet")
    assert r.stderr.strip() == "edgekit: error: bytecnn training takes minutes and does not resume; run it again " \
                               "without --resume"


# --- export ---------------------------------------------------------------------------------------
def test_export_parity_and_metadata(tiny_nano):
    rep = tiny_nano["report"]
    steps = {s["step"]: s for s in rep["steps"]}
    assert set(steps) == {"export", "simplify", "quantize:int8"}
    assert steps["simplify"]["parity"]["max_abs_diff"] <= 1e-4 and steps["simplify"]["ok"]
    assert abs(steps["quantize:int8"]["parity"]["spearman_delta"]) <= 0.01  # the export's own budget
    from edgekit.runtime.modelfile import open_model

    _, card = open_model(tiny_nano["onnx"])
    assert card.family == "bytecnn" and card.family_fields["max_len"] == 24 and card.config["emb_dim"] == 16
    assert card.quantization.scheme == rep["scheme"] in ("fp32", "int8")
    assert card.source.sha256 and card.source.checkpoint.endswith("nano-cnn.pt")
    assert card.verification["max_abs_diff"] <= (1e-4 if rep["scheme"] == "fp32" else INT8_TOLERANCE)
    if rep["scheme"] == "int8":
        assert card.verification["mean_abs_diff"] <= 0.01 and "per output channel" in card.quantization.recipe["recipe"]


def test_export_rejects_schemes_it_does_not_have(tiny_nano, tmp_path):
    r = run_cli("export", tiny_nano["ckpt"], "-o", tmp_path / "m.onnx", "--quant", "int4", "--quiet")
    assert r.exit_code == 1
    assert r.stderr.strip() == "edgekit: error: --quant int4 does not apply to bytecnn models; choose one of auto, fp32, int8"


# --- runtime and infer ----------------------------------------------------------------------------
def test_scorer_matches_pytorch_and_batches(tiny_nano, monkeypatch):
    from edgekit.runtime import bytecnn as rt
    from edgekit.runtime import load
    from edgekit.train.checkpoint import load_checkpoint

    scorer = load(tiny_nano["onnx"], threads=1)
    assert scorer.family == "bytecnn" and scorer.card.family == "bytecnn"
    words = ["the", "brillig", "Bandersnatch", "naïve", "don’t", "a" * 40]
    got = scorer.score(words)
    assert got.dtype == np.float32 and got.shape == (6,)
    model = load_checkpoint(tiny_nano["ckpt"]).build_model()
    norm = [rt.normalize(w) for w in words]
    with torch.no_grad():
        ref = model(torch.from_numpy(bytecnn.encode_words(norm, max_len=24))).numpy()
    tol = 1e-4 if scorer.card.quantization.scheme == "fp32" else INT8_TOLERANCE
    assert np.abs(got - ref).max() <= tol
    assert [scorer.score_one(w) for w in words] == pytest.approx(got.tolist(), abs=1e-6)
    monkeypatch.setattr(rt, "BATCH", 4)  # chunking across batch boundaries gives the same scores
    assert np.array_equal(scorer.score(words * 3), np.tile(got, 3))
    with pytest.raises(UsageError, match="empty word"):
        scorer.score(["ok", "  "])
    with pytest.raises(UsageError, match="contains whitespace"):
        scorer.score_one("two words")


def test_infer_prints_word_tab_score(tiny_nano):
    r = run_cli("infer", tiny_nano["onnx"], "the", "brillig")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["the", "brillig"]
    assert all(0 <= float(ln.split("\t")[1]) <= 1 and len(ln.split("\t")[1]) == 6 for ln in lines)
    j = run_cli("infer", tiny_nano["onnx"], "the", "brillig", "--json")
    rows = json.loads(j.stdout)
    assert [r_["word"] for r_ in rows] == ["the", "brillig"]
    assert np.allclose([r_["score"] for r_ in rows], [float(ln.split("\t")[1]) for ln in lines], atol=6e-5)


def test_infer_reads_stdin(tiny_nano):
    words = [f"word{'x' * (i % 7)}" for i in range(20000)]  # more than one stdin chunk
    r = run_cli("infer", tiny_nano["onnx"], input="\n".join(words) + "\n\n")
    assert r.exit_code == 0, r.output
    assert [ln.split("\t")[0] for ln in r.stdout.splitlines()] == words
    r = run_cli("infer", tiny_nano["onnx"], "-", "--json", input="the\nvorpal\n")
    assert [row["word"] for row in json.loads(r.stdout)] == ["the", "vorpal"]


@pytest.mark.parametrize("args, stdin, line", [
    (["--temperature", "0.5", "the"], None,
     "--temperature does not apply to word scorers (bytecnn); give words and optionally --json or --threads"),
    ([], "", "no words to score; give words as arguments or one per line on stdin"),
    ([""], None, "argument 1: empty word; give words of at least one character"),
    (["the", "-"], None, "'-' (read stdin) must be the only input; give words or '-'"),
    ([], "the\nred fox\n", "stdin line 2: 'red fox' contains whitespace; give one word per argument or line"),
])
def test_infer_bad_input_is_one_line(tiny_nano, args, stdin, line):
    r = run_cli("infer", tiny_nano["onnx"], *args, input=stdin)
    assert r.exit_code == 1
    assert r.stderr.strip() == f"edgekit: error: {line}"


def test_runtime_module_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None\n"
            "import edgekit.runtime, edgekit.runtime.bytecnn\n"
            "assert 'torch' not in {m for m in sys.modules if sys.modules[m] is not None}\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_serve_answers_word_scores_on_the_route_the_family_declares(tiny_nano):
    from edgekit.runtime import load

    from serving import Server

    scorer = load(tiny_nano["onnx"], threads=1)
    words = ["the", "jabberwocky", "zyxxq"]
    with Server(tiny_nano["onnx"]) as s:
        models = s.http.get("/v1/models").json()["data"][0]["meta"]
        assert models["routes"] == ["/v1/word_scores"] and not models["generates"]
        r = s.http.post("/v1/word_scores", json={"input": words})
        assert [d["word"] for d in r.json()["data"]] == words
        np.testing.assert_allclose([d["score"] for d in r.json()["data"]], scorer.score(words), atol=1e-5)
        assert s.http.post("/v1/word_scores", json={"input": [""]}).status_code == 400
        assert s.http.post("/v1/embeddings", json={"input": [[0.0]]}).status_code == 404
