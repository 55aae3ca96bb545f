"""The continuous-batching engine (runtime/gpt_batch.py) under `edgekit serve`: rows join at chunk boundaries
and leave when done, each with its own options and seed; a seeded request returns the same tokens alone,
inside a batch and through `edgekit infer`.

Batch numerics: onnxruntime's kernels sum in a different order for a batch of 8 than for one row (last-bit
differences, ~1e-6 in the logits), and the int8-activation MatMulNBits of the shipped file can turn such a
difference into one quantization step (up to ~0.1 in a logit). A near-tie can then pick another token,
so token equality with a solo run is asserted where the batch's make-up is fixed (requests queued before
the worker starts), not where it depends on timing."""
from __future__ import annotations

import json
import pathlib
import queue
import time

import pytest

from edgekit.runtime import load
from edgekit.runtime.gpt_batch import BatchEngine, Done, Token

from conftest import run_cli

SOMA = pathlib.Path(__file__).resolve().parent.parent / "examples" / "reference" / "soma-stdlib.onnx"
# (prompt, options): greedy, top-k sampled, sampled over the whole vocabulary (numpy path), penalized, stopped
ROWS = [("def get_", dict(max_new_tokens=24)),
        ("import ", dict(max_new_tokens=24, temperature=0.8, top_k=40, seed=3)),
        ("class Foo(", dict(max_new_tokens=16, temperature=0.9, seed=5)),
        ("    return ", dict(max_new_tokens=24, repeat_penalty=1.3, repeat_last_n=8)),
        ("for i in range(", dict(max_new_tokens=20, temperature=0.7, top_k=20, top_p=0.9, seed=11)),
        ("x = ", dict(max_new_tokens=24, stop=[")"])),
        ("from os import ", dict(max_new_tokens=8, temperature=1.2, top_k=5, seed=0)),
        ("if __name__", dict(max_new_tokens=24, temperature=0.8, top_k=40, seed=3))]


@pytest.fixture(scope="module")
def lm():
    return load(SOMA, threads=1)


def _collect(engine, lm, prompt, kw, *, logprobs=0):
    q: queue.Queue = queue.Queue()
    engine.submit(lm.encode(prompt), lm.options(**kw), q.put, logprobs=logprobs)
    return q


def _drain(q: queue.Queue):
    pieces = []
    while True:
        for ev in q.get(timeout=60):
            if isinstance(ev, Token):
                pieces.append(ev.text)
            else:
                return ev, "".join(pieces)


def test_seeded_and_greedy_rows_give_the_same_tokens_alone_in_a_batch_and_through_infer(lm):
    engine = BatchEngine(lm, slots=8)
    queues = [_collect(engine, lm, p, kw) for p, kw in ROWS]  # queued before the worker starts: one batch of 8
    engine.start()
    batched = [_drain(q) for q in queues]
    engine.stop(1)
    alone = BatchEngine(lm, slots=1).start()
    for (prompt, kw), (done, streamed) in zip(ROWS, batched):
        assert isinstance(done, Done) and streamed == done.text
        g = lm.generate(prompt, **kw)
        solo, _ = _drain(_collect(alone, lm, prompt, kw))
        assert done.token_ids == g.token_ids == solo.token_ids, (prompt, kw)
        assert done.text == g.text and done.finish_reason == {"eot": "stop"}.get(g.stop_reason, g.stop_reason)
    alone.stop(1)
    prompt, kw = ROWS[1]
    r = run_cli("infer", SOMA, prompt, "--max-new-tokens", kw["max_new_tokens"], "--temperature", kw["temperature"],
                "--top-k", kw["top_k"], "--seed", kw["seed"], "--json")
    assert json.loads(r.stdout)["token_ids"] == batched[1][0].token_ids


def test_a_new_request_joins_the_running_batch_at_a_chunk_boundary(lm):
    """A request arriving while a long one decodes gets its tokens before the long one ends, and the two
    share onnxruntime calls (fewer calls than the two alone)."""
    engine = BatchEngine(lm, slots=4).start()
    long_q = _collect(engine, lm, "x = ", dict(max_new_tokens=2000, window="slide"))
    first = long_q.get(timeout=30)
    assert isinstance(first[0], Token) and engine.busy == 1
    calls0 = engine.calls
    short, text = _drain(_collect(engine, lm, "def get_", dict(max_new_tokens=48)))
    assert not any(isinstance(ev, Done) for evs in list(long_q.queue) for ev in evs), "the long request had ended"
    assert len(short.token_ids) == 48 or short.finish_reason == "stop"
    shared = engine.calls - calls0
    long_done, _ = _drain(long_q)
    assert long_done.finish_reason in ("length", "stop")
    assert shared <= 48 // 16 + 6, f"the short request took {shared} calls: it did not ride the batch's chunks"
    engine.stop(1)


def test_cancel_leaves_the_batch_within_one_chunk_and_others_go_on(lm):
    engine = BatchEngine(lm, slots=4).start()
    q1: queue.Queue = queue.Queue()
    t1 = engine.submit(lm.encode("x = "), lm.options(max_new_tokens=50_000), q1.put)
    other = _collect(engine, lm, "import ", dict(max_new_tokens=64))
    q1.get(timeout=30)
    t1.cancel()
    t0 = time.monotonic()
    done, _ = _drain(q1)
    assert done.finish_reason == "cancelled" and len(done.token_ids) < 50_000 // 10
    assert time.monotonic() - t0 < 1
    other_done = _drain(other)[0]  # (its tokens may differ from a solo run's: see the note on batch numerics)
    assert len(other_done.token_ids) == 64 or other_done.finish_reason == "stop"
    engine.stop(1)
    assert engine.busy == 0


def test_rows_slide_their_window_inside_the_batch(lm):
    """Past the block (soma: 128 tokens) a row re-encodes its window alone and stays in the batch."""
    engine = BatchEngine(lm, slots=2)
    queues = [_collect(engine, lm, p, dict(max_new_tokens=300, temperature=0.8, top_k=40, seed=s))
              for p, s in (("def get_", 1), ("import ", 2))]
    engine.start()
    for q, (p, s) in zip(queues, (("def get_", 1), ("import ", 2))):
        done, _ = _drain(q)
        assert len(done.token_ids) == 300 or done.finish_reason == "stop"
    engine.stop(1)


def test_submit_refuses_bad_options_a_full_queue_and_a_draining_engine(lm):
    from edgekit.errors import UsageError
    from edgekit.runtime.gpt_batch import QueueFull, Stopped

    engine = BatchEngine(lm, slots=1, max_queue=1)
    with pytest.raises(UsageError, match="logprobs"):
        engine.submit([1, 2], lm.options(), print, logprobs=99)
    engine.submit([1, 2], lm.options(), lambda ev: None)
    with pytest.raises(QueueFull):
        engine.submit([1, 2], lm.options(), lambda ev: None)
    engine.start()
    assert engine.stop(5)
    with pytest.raises(Stopped):
        engine.submit([1, 2], lm.options(), lambda ev: None)
    assert not engine._thread.is_alive()


def test_rows_with_different_settings_share_loop_calls_on_a_per_row_sampler_file(lm):
    """The shipped file takes the sampler's settings per row: greedy, top-k sampled and penalized rows decode
    together a chunk per call (not a call per token), each with its solo tokens."""
    assert lm.row_sampler
    rows = [ROWS[0], ROWS[1], ROWS[3], ROWS[4]]  # greedy; T 0.8 top-k 40; penalty 1.3 over 8; T 0.7 top-k 20 top-p 0.9
    engine = BatchEngine(lm, slots=4)
    queues = [_collect(engine, lm, p, kw) for p, kw in rows]
    engine.start()
    done = [_drain(q)[0] for q in queues]
    engine.stop(1)
    assert engine.calls <= 2 + 24 // 16 + 4, f"{engine.calls} calls: the rows did not share Loop chunks"
    for (prompt, kw), d in zip(rows, done):
        assert d.token_ids == lm.generate(prompt, **kw).token_ids, (prompt, kw)
