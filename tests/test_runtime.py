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
    a, b = looped._run(prompts, opts), stepped._run(prompts, opts)
    streamed = looped._run(prompts[:1], opts, on_token=lambda row, piece: None)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert streamed[0].token_ids == b[0].token_ids
    assert [g.window_slides for g in a] == [g.window_slides for g in b]
    assert n < looped.block_size or a[0].window_slides > 0 or a[0].stop_reason == "eot"
