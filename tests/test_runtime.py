"""The runtime API: generation, streaming, batches, the sliding window, determinism, threads, no torch."""
import json
import subprocess
import sys
import threading

import pytest

from conftest import run_cli
from edgekit.errors import UsageError
from edgekit.runtime.gpt import SamplingOptions


@pytest.fixture(scope="module")
def lm(tiny_soma):
    from edgekit.runtime import load

    return load(tiny_soma["onnx"], threads=1)


def test_generate_returns_text_ids_and_timing(lm):
    g = lm.generate("def get_", max_new_tokens=12, heal=False)
    assert len(g.token_ids) == 12 and g.prompt_ids == lm.tokenizer.encode("def get_")
    assert g.text == lm.tokenizer.decode(g.token_ids)
    assert g.ttft_ms > 0 and g.tokens_per_s > 0 and g.healed == 0


def test_token_healing_regenerates_a_dangling_last_token(lm):
    """ "import " ends in a lone space token; healing lets the model write " os" rather than a space and "os"."""
    prompt = "import "
    ids = lm.tokenizer.encode(prompt)
    g = lm.generate(prompt, max_new_tokens=8)
    assert g.healed == 1 and g.prompt_ids == ids
    first = lm.tokenizer.token_bytes(g.token_ids[0])
    assert first.startswith(lm.tokenizer.token_bytes(ids[-1]))  # the first token extends the one it replaced
    assert prompt + g.text == lm.tokenizer.decode(ids[:-1] + g.token_ids)


def test_greedy_is_deterministic_and_seed_repeats_sampling(lm):
    assert lm.generate("import ", max_new_tokens=16).token_ids == lm.generate("import ", max_new_tokens=16).token_ids
    a = lm.generate("import ", max_new_tokens=16, temperature=1.0, top_k=50, seed=3)
    b = lm.generate("import ", max_new_tokens=16, temperature=1.0, top_k=50, seed=3)
    c = lm.generate("import ", max_new_tokens=16, temperature=1.0, top_p=0.9, seed=4)
    assert a.token_ids == b.token_ids and len(c.token_ids) == 16


def test_stream_pieces_join_to_the_generation(lm):
    pieces = list(lm.stream("class ", max_new_tokens=20))
    assert "".join(pieces) == lm.generate("class ", max_new_tokens=20).text


def test_stream_is_correct_across_multibyte_characters(lm):
    # byte-level BPE splits "é" and emoji into byte tokens; pieces must hold whole characters only
    prompt = "# café ☕ naïve 😀 "
    pieces = list(lm.stream(prompt, max_new_tokens=24, temperature=1.5, seed=11))
    joined = "".join(pieces)
    assert joined == lm.generate(prompt, max_new_tokens=24, temperature=1.5, seed=11).text
    for p in pieces:
        p.encode("utf-8")  # no lone surrogates, every piece is valid text


def test_sliding_window_keeps_generating_past_the_block(lm):
    block = lm.block_size
    g = lm.generate("def f():\n    return 1\n" * 30, max_new_tokens=block + 10)
    assert len(g.token_ids) == block + 10 and g.window_slides >= 1
    assert len(g.prompt_ids) > block  # the whole prompt is reported even though the window kept its tail


def test_batch_matches_single_prompts(lm):
    prompts = ["import os\n", "def get_", "class Foo("]
    batch = lm.generate_batch(prompts, max_new_tokens=10)
    singles = [lm.generate(p, max_new_tokens=10) for p in prompts]
    assert [b.token_ids for b in batch] == [s.token_ids for s in singles]


def test_stop_strings_end_the_completion(lm):
    g = lm.generate("def get_", max_new_tokens=60, stop=["\n"])
    full = lm.generate("def get_", max_new_tokens=60)  # greedy: the same tokens, without the stop string
    assert "\n" not in g.text
    if "\n" in full.text:
        assert g.stop_reason == "stop" and g.text == full.text[:full.text.index("\n")]
    else:
        assert g.stop_reason == full.stop_reason and full.stop_reason in ("length", "eot") and g.text == full.text


def test_one_model_shared_by_threads_gives_identical_greedy_outputs(lm):
    expected = lm.generate("def get_", max_new_tokens=16).token_ids
    results, errors = [], []

    def work():
        try:
            for _ in range(10):
                results.append(lm.generate("def get_", max_new_tokens=16).token_ids)
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(results) == 40 and all(r == expected for r in results)


@pytest.mark.parametrize("kwargs,match", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"max_new_tokens": 10**9}, "max_new_tokens"), ({"temperature": -0.5}, "temperature"),
    ({"top_k": 0}, "top_k"), ({"top_p": 1.5}, "top_p"), ({"top_p": 0.0}, "top_p"),
])
def test_bad_generation_options_raise_usage_errors(lm, kwargs, match):
    with pytest.raises(UsageError, match=match):
        lm.generate("x", **kwargs)


def test_empty_prompt_is_refused(lm):
    with pytest.raises(UsageError, match="empty"):
        lm.generate("")


def test_import_runtime_with_torch_blocked(tiny_soma):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnx', 'onnxscript', 'onnxsim'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edgekit.runtime import load\n"
        f"lm = load({str(tiny_soma['onnx'])!r}, threads=1)\n"
        "print(len(lm.generate('def ', max_new_tokens=5).token_ids))\n"
        "assert not any(m.split('.')[0] in ('torch', 'onnx') for m in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "5"


def test_cli_infer_streams_and_prints_json(tiny_soma):
    r = run_cli("infer", tiny_soma["onnx"], "def get_", "--max-new-tokens", 8, "--threads", 1)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("def get_")
    r = run_cli("infer", tiny_soma["onnx"], "-", "--json", "--max-new-tokens", 8, input="import ")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert {"completion", "token_ids", "prompt_ids", "tokens_per_s", "ttft_ms"} <= out.keys()
    assert len(out["token_ids"]) == 8


def test_cli_help_does_not_import_torch():
    code = "import sys\nfrom edgekit.cli import cli\ntry:\n    cli(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip().endswith("False"), r.stdout + r.stderr


@pytest.mark.parametrize("n", [1, 2, 17, 150])
def test_loop_graph_gives_the_tokens_of_python_driven_steps(tiny_soma, n):
    """Greedy decoding through the file's ONNX Loop (many passes per call, streaming in 16-token
    chunks, window slides in between) yields exactly the tokens of one Python-driven pass per token."""
    from edgekit.runtime import load

    looped, stepped = load(tiny_soma["onnx"], threads=1), load(tiny_soma["onnx"], threads=1)
    assert looped.loop, "exports wrap the decode step in the generation Loop"
    stepped.loop = False  # the same file driven one pass per call, as files without the Loop are
    opts = SamplingOptions(max_new_tokens=n, heal=False)
    prompts = [looped.encode("def get_"), looped.encode("import os\nclass A:\n    x = ")]
    a, b = looped.run(prompts, opts), stepped.run(prompts, opts)
    streamed = looped.run(prompts[:1], opts, on_token=lambda row, piece: None)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert streamed[0].token_ids == b[0].token_ids
    assert [g.window_slides for g in a] == [g.window_slides for g in b]
    assert n < looped.block_size or a[0].window_slides > 0 or a[0].stop_reason == "eot"


def _sampler_session(tiny_soma):
    """The exported file's Loop sampler, run on its own over a fixed logit vector (a 1-node-deep view
    of the same nodes ``wrap_loop`` puts in the Loop body)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto as TP
    from onnx import helper as h

    from edgekit.export.gpt import _sampler_nodes

    p = "s."
    nodes = [h.make_node("Identity", ["u"], [p + "u"]), h.make_node("Identity", ["recent_ids"], [p + "recent_ids"])]
    nodes += _sampler_nodes(p, "logits", "token")
    vi = h.make_tensor_value_info
    g = h.make_graph(nodes, "sampler", [vi("logits", TP.FLOAT, [None, None]), vi("u", TP.FLOAT, [None]),
                                        vi("recent_ids", TP.INT64, [None, None]), vi("temperature", TP.FLOAT, [None, 1]),
                                        vi("top_k", TP.INT64, [1]), vi("top_p", TP.FLOAT, [None, 1]),
                                        vi("repeat_penalty", TP.FLOAT, [None, 1]), vi("row_top_k", TP.INT64, [None, 1]),
                                        vi("recent_window", TP.INT64, [None, 1])], [vi("token", TP.INT64, None)])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 18)], ir_version=10)
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def test_in_graph_sampler_draws_the_softmax_distribution(tiny_soma):
    """200k draws over a fixed 6-logit vector: top-k/temperature/top-p frequencies match the renormalized
    softmax (chi-square far below the 0.1% critical value); top_k 1 is the argmax; the penalty matches numpy."""
    import numpy as np

    from edgekit.runtime.gpt import SamplingOptions, penalize, sample_next

    s = _sampler_session(tiny_soma)
    logits = np.array([2.0, 1.0, 0.5, -0.3, 3.1, 0.0], dtype=np.float32)
    n = 200_000
    u = np.random.default_rng(0).random(n).astype(np.float32)
    rows = np.repeat(logits[None], n, axis=0)

    def draw(k, t, p, penalty=1.0, recent=None, window=None, k_max=None):
        recent = np.zeros((n, 1), dtype=np.int64) if recent is None else np.repeat(recent[None], n, axis=0)
        col = lambda v, dt: np.full((n, 1), v, dtype=dt)  # noqa: E731  (every row the same settings)
        return s.run(None, {"logits": rows, "u": u, "recent_ids": recent, "temperature": col(t, np.float32),
                            "top_k": np.array([k_max or k]), "row_top_k": col(k, np.int64),
                            "top_p": col(p, np.float32), "repeat_penalty": col(penalty, np.float32),
                            "recent_window": col(recent.shape[1] if window is None else window, np.int64)})[0][:, 0]

    for k, t, p in [(6, 1.0, 1.0), (3, 0.7, 1.0), (6, 1.3, 0.8)]:
        z = logits.astype(np.float64) / t
        order = np.argsort(-z, kind="stable")[:k]
        q = np.exp(z[order] - z[order].max())
        q /= q.sum()
        q = np.where(np.cumsum(q) - q < p, q, 0)
        q /= q.sum()
        want = np.zeros(6)
        want[order] = q
        got = np.bincount(draw(k, t, p), minlength=6)
        assert (got[want == 0] == 0).all()
        exp = want[want > 0] * n
        chi2 = float(((got[want > 0] - exp) ** 2 / exp).sum())
        assert chi2 < 22.5, (k, t, p, got, exp)  # 0.1% critical value for <= 5 degrees of freedom: 20.5
        # numpy's mirror of the graph draws the same ids from the same uniforms
        opts = SamplingOptions(temperature=t, top_k=k, top_p=p)
        assert (sample_next(rows[:2000], opts, u[:2000]) == draw(k, t, p)[:2000]).all()
    assert (draw(1, 1.0, 1.0) == logits.argmax()).all()
    recent = np.array([4, 4, 0, 3], dtype=np.int64)
    pen = penalize(logits[None], recent[None], 1.5)[0]
    assert pen[4] == np.float32(3.1) / np.float32(1.5) and pen[3] == np.float32(-0.3) * np.float32(1.5) and pen[1] == 1.0
    assert (draw(1, 1.0, 1.0, penalty=1.5, recent=recent) == pen.argmax()).all()
    # per row: a row's own k inside a larger batch k, and its own penalty window (the last 2 of 4 columns)
    assert (draw(3, 0.7, 1.0, k_max=6) == draw(3, 0.7, 1.0)).all()
    pen2 = penalize(rows[:2000], np.repeat(recent[None, 2:], 2000, axis=0), 1.5)
    two = draw(6, 1.0, 1.0, penalty=1.5, recent=recent, window=2)
    assert (sample_next(pen2, SamplingOptions(temperature=1.0, top_k=6), u[:2000]) == two[:2000]).all()
    assert (two != draw(6, 1.0, 1.0, penalty=1.5, recent=recent)).any()


def test_loop_sampling_is_repeatable_and_matches_python_driven_sampling(tiny_soma):
    """Sampled and penalized decoding through the Loop (one call per chunk) gives, for a seed, the tokens
    of one numpy-sampled pass per call; the same seed repeats, streaming yields the same text."""
    from edgekit.runtime import load

    looped, stepped = load(tiny_soma["onnx"], threads=1), load(tiny_soma["onnx"], threads=1)
    assert looped.sampler_in_graph
    stepped.loop = False
    prompts = [looped.encode("def get_"), looped.encode("import os\nclass A:\n    x = ")]
    for opts in [SamplingOptions(max_new_tokens=150, temperature=0.8, top_k=40, seed=3, heal=False),
                 SamplingOptions(max_new_tokens=40, temperature=1.2, top_k=20, top_p=0.9, seed=5),
                 SamplingOptions(max_new_tokens=40, repeat_penalty=1.3, repeat_last_n=8, heal=False),
                 SamplingOptions(max_new_tokens=40, temperature=0.9, top_k=40, repeat_penalty=1.2, seed=7)]:
        a, b = looped.run(prompts, opts), stepped.run(prompts, opts)
        assert [g.token_ids for g in a] == [g.token_ids for g in b]
        assert [g.token_ids for g in looped.run(prompts, opts)] == [g.token_ids for g in a]
    g = looped.generate("class ", max_new_tokens=30, temperature=0.8, top_k=40, seed=9)
    assert "".join(looped.stream("class ", max_new_tokens=30, temperature=0.8, top_k=40, seed=9)) == g.text
    other = looped.generate("class ", max_new_tokens=30, temperature=0.8, top_k=40, seed=10)
    assert other.token_ids != g.token_ids


def test_repeat_penalty_breaks_greedy_loops_and_is_validated(lm):
    plain = lm.generate("x = x + x + x + ", max_new_tokens=40, heal=False)
    pen = lm.generate("x = x + x + x + ", max_new_tokens=40, heal=False, repeat_penalty=2.0)
    assert pen.token_ids != plain.token_ids
    import numpy as np

    from edgekit.runtime.gpt import penalize

    ids = lm.encode("x = x + x + x + ")
    logits = lm.prefill([ids])[0][:, : lm.vocab_size]
    assert pen.token_ids[0] == int(penalize(logits, np.array([ids[-64:]]), 2.0).argmax())  # the prompt is in the window
    with pytest.raises(UsageError, match="repeat_penalty"):
        lm.generate("x", repeat_penalty=0)
    with pytest.raises(UsageError, match="repeat_last_n"):
        lm.generate("x", repeat_penalty=1.1, repeat_last_n=-1)


def test_top_k_ids_is_a_stable_descending_sort_prefix():
    """The numpy first-token sampler's top-k (argpartition) picks exactly what a stable argsort of -logits
    and the graph's TopK pick: descending logits, ties to the lower id, boundary ties included."""
    import numpy as np

    from edgekit.runtime.gpt_sampling import top_k_ids

    rng = np.random.default_rng(0)
    for trial in range(200):
        V, B = int(rng.integers(2, 200)), int(rng.integers(1, 4))
        k = int(rng.integers(1, V + 1))
        x = (rng.integers(-3, 3, size=(B, V)) if trial % 2 else rng.standard_normal((B, V))).astype(np.float32)
        assert (top_k_ids(x, k) == np.argsort(-x, axis=-1, kind="stable")[:, :k]).all(), (V, B, k)
