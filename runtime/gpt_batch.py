"""Continuous batching over one ``GPTModel``: concurrent requests share onnxruntime calls, and a new request
joins the running batch at the next chunk boundary instead of waiting for the batch to finish.

    engine = BatchEngine(lm, slots=8).start()
    ticket = engine.submit(lm.encode("def get_"), lm.options(max_new_tokens=32), emit=events.put, logprobs=2)
    # emit([Token, ...]) once per tick with the tokens it made, ending in Done (or [Failed]); ticket.cancel() stops it
    engine.stop(drain_s=30)

One worker thread drives the batch (onnxruntime releases the GIL while it runs, so callers stay responsive).
Each tick: queued requests are prefilled (one call per group of equal-length prompts, unpadded, so each
row's numbers are its solo prefill's) and draw their first token, rows whose context is full slide their
window (together, as equal-length rows), then the batch decodes one chunk: up to
``chunk`` passes in one call of the file's generation Loop when every row can sample in the graph, else one
pass whose logits each row samples in numpy with its own options (and log-probabilities when asked).
Rows keep their own ``SamplingOptions`` and random generator (one uniform per token, drawn in order, as
``run`` draws them), so a seeded request gets the same tokens alone, inside a batch and from ``generate``.
The batch is left-padded (attention_mask 0 = padding; positions follow the mask); when rows join or leave,
the caches are re-assembled in numpy and trimmed of columns no row uses, so their width stays within the
block. The graph's per-row sampler inputs (exports since issue 22: (B, 1) temperature, top_p,
repeat_penalty, row_top_k and recent_window) let rows with different settings share a Loop call; older
files with scalar sampler inputs share it only when the rows' settings are equal, else step once per call.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnxruntime as ort

from edgekit.errors import EdgekitError
from edgekit.runtime.gpt import GPTModel, _Rows
from edgekit.runtime.gpt_sampling import SamplingOptions

MAX_LOGPROBS = 20  # top log-probabilities per token a request may ask for


class QueueFull(EdgekitError):
    """More requests wait than the engine's ``max_queue``."""


class Stopped(EdgekitError):
    """The engine is draining or stopped and takes no new requests."""


@dataclass
class Token:
    """One generated token: its id, the text it completes (may be "" mid-character) and log-probabilities."""

    token_id: int
    text: str
    logprob: float | None = None  # the token's log-probability under the model (temperature 1), if asked
    top: list[tuple[int, float]] | None = None  # the ``logprobs`` most likely (id, log-probability)


@dataclass
class Done:
    """A finished request."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # stop (end of text or a stop string) | length | cancelled
    ttft_ms: float
    total_ms: float


@dataclass
class Failed:
    """A request the runtime could not finish (the others go on)."""

    error: BaseException


@dataclass
class Ticket:
    """A submitted request; ``cancel`` makes it leave the batch at the next chunk boundary."""

    prompt_ids: list[int]
    opts: SamplingOptions
    emit: Callable[[object], None]
    logprobs: int = 0
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled = True


class _Slot:
    """One row of the batch: its ticket, random generator, text state and the token it feeds next."""

    def __init__(self, t: Ticket, lm: GPTModel):
        self.t, self.opts = t, t.opts
        self.rng = np.random.default_rng(t.opts.seed)
        heal = lm._heal(list(t.prompt_ids)) if t.opts.heal else (list(t.prompt_ids), None, 0)
        self.keep = lm.block_size if t.opts.window == "exact" else lm._keep
        self.st = _Rows([heal], self.keep, lm.block_size, lm.tokenizer)
        self.first_at: float | None = None
        self.finished = False
        self.events: list = []  # made this tick, emitted together (one wake-up of the caller per tick, not per token)

    def flush(self) -> None:
        if self.events:
            events, self.events = self.events, []
            self.t.emit(events)

    @property
    def context(self) -> list[int]:
        return self.st.rows[0]

    def todo(self) -> int:
        return self.opts.max_new_tokens - len(self.st.out[0])


def _merge(parts: list[tuple[list[np.ndarray], np.ndarray]]) -> tuple[list[np.ndarray], np.ndarray]:
    """Caches ((b, H, W, hs) per past input) and masks (b, W) of several row groups -> one left-padded batch,
    without the leading columns that no row uses."""
    width = max(m.shape[1] for _, m in parts)
    B = sum(m.shape[0] for _, m in parts)
    n_past = len(parts[0][0])
    H, hs = parts[0][0][0].shape[1], parts[0][0][0].shape[3]
    past = [np.zeros((B, H, width, hs), dtype=np.float32) for _ in range(n_past)]
    mask = np.zeros((B, width), dtype=np.int64)
    b = 0
    for arrs, m in parts:
        n, w = m.shape
        mask[b:b + n, width - w:] = m
        for dst, src in zip(past, arrs):
            dst[b:b + n, :, width - w:] = src
        b += n
    start = int(mask.any(axis=0).argmax()) if mask.any() else width
    return [np.ascontiguousarray(p[:, :, start:]) for p in past], np.ascontiguousarray(mask[:, start:])


def _logprobs(logits: np.ndarray, tid: int, n: int) -> tuple[float, list[tuple[int, float]]]:
    """The token's log-probability under softmax(logits) and the ``n`` most likely (id, log-probability)."""
    z = logits.astype(np.float64)
    lp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
    top = np.argpartition(-lp, n - 1)[:n] if n else np.array([], dtype=np.int64)
    top = top[np.argsort(-lp[top], kind="stable")]
    return float(lp[tid]), [(int(i), float(lp[i])) for i in top]


class BatchEngine:
    """Continuous batching for one ``GPTModel`` (see the module docstring); thread-safe ``submit``."""

    def __init__(self, lm: GPTModel, *, slots: int = 8, chunk: int = 16, max_queue: int = 64):
        from edgekit.errors import UsageError

        for name, v in (("slots", slots), ("chunk", chunk), ("max_queue", max_queue)):
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 4096:
                raise UsageError(f"{name} must be an integer from 1 to 4096; got {v!r}")
        self.lm, self.slots, self.chunk, self.max_queue = lm, slots, chunk, max_queue
        self._queue: deque[Ticket] = deque()
        self._cv = threading.Condition()
        self._rows: list[_Slot] = []
        self._past: list[ort.OrtValue] = []
        self._mask = np.zeros((0, 0), dtype=np.int64)
        self._accepting, self._stopping = True, False
        self._thread: threading.Thread | None = None
        self._io = lm._binding()
        self.calls = 0  # onnxruntime calls made (prefills, steps and Loop chunks)

    @property
    def busy(self) -> int:
        """Rows in the batch now."""
        return len(self._rows)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, prompt_ids: list[int], opts: SamplingOptions, emit: Callable[[object], None], *,
               logprobs: int = 0) -> Ticket:
        """Queue a request; ``emit`` gets lists of its events (from the engine's thread): Tokens, then one Done
        (or one Failed), at most one call per tick.

        Raises UsageError (bad options), QueueFull (``max_queue`` requests wait) or Stopped (draining)."""
        from edgekit.errors import UsageError

        opts.validate(self.lm.vocab_size)
        if not isinstance(logprobs, int) or isinstance(logprobs, bool) or not 0 <= logprobs <= MAX_LOGPROBS:
            raise UsageError(f"logprobs must be an integer from 0 to {MAX_LOGPROBS}; got {logprobs!r}")
        if not prompt_ids:
            raise UsageError("prompt is empty; give at least one token")
        t = Ticket(list(prompt_ids), opts, emit, logprobs)
        with self._cv:
            if not self._accepting:
                raise Stopped("the server is shutting down and takes no new requests")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting (max_queue {self.max_queue}); retry later")
            self._queue.append(t)
            self._cv.notify()
        return t

    def start(self) -> "BatchEngine":
        self._thread = threading.Thread(target=self._work, name="edgekit-batch", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain_s: float = 30.0) -> bool:
        """Take no new requests, let queued and running ones finish for up to ``drain_s`` seconds, cancel
        the rest and end the thread. True when everything finished in time."""
        with self._cv:
            self._accepting = False
        deadline = time.monotonic() + drain_s
        while (self._rows or self._queue) and time.monotonic() < deadline and self._thread is not None:
            time.sleep(0.01)
        drained = not (self._rows or self._queue)
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return drained

    # ----- the worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cv:
                while not (self._queue or self._rows or self._stopping):
                    self._cv.wait()
                if self._stopping:
                    for t in [s.t for s in self._rows] + list(self._queue):
                        t.cancel()
                    self._queue.clear()
                    for s in self._rows:
                        self._finish(s)
                    self._rows = []
                    return
            try:
                self.tick()
            except Exception as e:  # a batched call failed: its rows fail, the engine goes on
                for s in self._rows:
                    s.finished, s.events = True, []
                    s.t.emit([Failed(e)])
                self._rows, self._past, self._mask = [], [], np.zeros((0, 0), dtype=np.int64)

    def tick(self) -> None:
        """Admit queued requests, slide full windows, decode one chunk; rows that finished leave."""
        self._admit()
        self._slide()
        self._leave()
        if self._rows:
            self._decode()
            for s in self._rows:
                s.flush()
            self._leave()

    def _admit(self) -> None:
        new = []
        while len(self._rows) + len(new) < self.slots:
            with self._cv:
                if not self._queue:
                    break
                t = self._queue.popleft()
            try:
                new.append(_Slot(t, self.lm))
            except Exception as e:  # this request only
                t.emit([Failed(e)])
        if new:
            joined = self._prefill(new, first=True)
            for part in joined:
                part[0].flush()  # first tokens go out now, before the batch's next chunk
            self._rebuild(list(range(len(self._rows))), joined)

    def _prefill(self, slots: list[_Slot], *, first: bool) -> list:
        """Encode the rows' contexts and draw each row's next token: one call per group of equal length (no
        padding, so a row's numbers are those of its solo prefill). Returns (slot, cache, mask) of each row
        that goes on; a row whose call fails gets Failed (a group that fails is retried row by row)."""
        groups: dict[int, list[_Slot]] = {}
        for s in slots:
            if s.t.cancelled:
                self._finish(s)
            else:
                groups.setdefault(len(s.context), []).append(s)
        parts = []
        for group in groups.values():
            try:
                logits, past, mask = self.lm.prefill([s.context for s in group])
            except Exception as e:
                if len(group) > 1:
                    parts += [p for s in group for p in self._prefill([s], first=first)]
                    continue
                group[0].finished = True
                group[0].t.emit([Failed(e)])
                continue
            self.calls += 1
            arrs = [v.numpy() for v in past]
            for b, s in enumerate(group):
                self._sample(s, logits[b:b + 1], first=first)
                if not s.finished:
                    parts.append((s, [a[b:b + 1] for a in arrs], mask[b:b + 1]))
        return parts

    def _slide(self) -> None:
        """Rows whose context fills the block re-encode their last ``keep`` tokens (``run``'s window), together."""
        full = [b for b, s in enumerate(self._rows) if len(s.context) > self.lm.block_size and not s.finished]
        if not full:
            return
        for b in full:
            s = self._rows[b]
            s.st.rows[0] = s.context[-s.keep:]
        parts = self._prefill([self._rows[b] for b in full], first=False)
        self._rebuild([b for b in range(len(self._rows)) if b not in full], parts)

    def _leave(self) -> None:
        for s in self._rows:
            if s.t.cancelled and not s.finished:
                self._finish(s)
        keep = [b for b, s in enumerate(self._rows) if not s.finished]
        if len(keep) < len(self._rows):
            self._rebuild(keep, [])

    def _rebuild(self, keep: list[int], joined: list) -> None:
        """The batch of rows ``keep`` (indices into the current batch) plus ``joined`` (slot, cache, mask)."""
        parts = []
        if keep:
            idx = np.array(keep)
            parts.append(([v.numpy()[idx] for v in self._past], self._mask[idx]))
        parts += [(arrs, m) for _, arrs, m in joined]
        self._rows = [self._rows[b] for b in keep] + [s for s, _, _ in joined]
        if not parts:
            self._past, self._mask = [], np.zeros((0, 0), dtype=np.int64)
            return
        arrs, self._mask = _merge(parts)
        self._past = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrs]

    def _decode(self) -> None:
        """One chunk for the whole batch: n passes of the Loop, or one pass sampled per row in numpy."""
        lm, rows = self.lm, self._rows
        B = len(rows)
        nxt = np.array([s.context[-1] for s in rows], dtype=np.int64).reshape(B, 1)  # drawn, not yet in the cache
        mask = np.concatenate([self._mask, np.ones((B, 1), dtype=np.int64)], axis=1)
        room = min(lm.block_size - (len(s.context) - 1) for s in rows)  # passes before a row's context is full
        n = min(self.chunk, room, max(s.todo() for s in rows))
        feed = self._loop_feed(n) if n > 1 else None
        self.calls += 1
        if feed is None:
            logits, self._past = lm.step(nxt, mask, self._past, self._io)  # (B, V)
            self._mask = mask
            for b, s in enumerate(rows):
                self._sample(s, logits[b:b + 1], first=False)
            return
        toks, self._past = lm._greedy_steps(nxt, mask, self._past, self._io, n, feed["sampler"])  # (k, B)
        k = toks.shape[0]
        # the call fed nxt and every returned token but the last (the rows' next nxt)
        self._mask = np.concatenate([mask, np.ones((B, k - 1), dtype=np.int64)], axis=1)
        for i in range(k):
            for b, s in enumerate(rows):
                if not s.finished:
                    self._take(s, int(toks[i, b]), None, first=False)

    def _loop_feed(self, n: int) -> dict | None:
        """The Loop's sampler inputs for ``n`` passes of this batch, or None when a row needs numpy sampling
        (sampling without top-k, log-probabilities) or, in files with scalar sampler inputs, rows differ."""
        lm, rows = self.lm, self._rows
        if not lm.loop or any(s.t.logprobs for s in rows) or not all(lm._decode_plan(s.opts, None)[0] for s in rows):
            return None
        if not lm.sampler_in_graph:  # greedy, penalty-free rows on a Loop without a sampler
            return {"sampler": None}
        if lm.row_sampler:
            u = np.stack([s.rng.random(n) for s in rows], axis=1)  # (n, B): each row's own draws, in order
            return {"sampler": lm._sampler_feed([s.opts for s in rows], u, [s.context for s in rows])}
        feeds = [lm._sampler_feed([s.opts], np.zeros((n, 1)), [s.context]) for s in rows]
        key = [tuple(np.asarray(f[k]).tobytes() for k in ("temperature", "top_k", "top_p", "repeat_penalty"))
               + (f["recent_ids"].shape,) for f in feeds]
        if any(k != key[0] for k in key):
            return None
        u = np.stack([s.rng.random(n) for s in rows], axis=1)
        return {"sampler": {**feeds[0], "uniforms": u.astype(np.float32),
                            "recent_ids": np.concatenate([f["recent_ids"] for f in feeds])}}

    def _sample(self, s: _Slot, logits: np.ndarray, *, first: bool) -> None:
        """Draw the row's next token from its (1, V) logits in numpy (``run``'s ``_sample``) and take it."""
        healed = [s.st.healed[0]] if first else None
        tid = int(self.lm._sample(logits, s.opts, s.st.rows, s.rng, healed)[0])
        self._take(s, tid, logits[0, : self.lm.vocab_size] if s.t.logprobs else None, first=first)

    def _take(self, s: _Slot, tid: int, logits: np.ndarray | None, *, first: bool) -> None:
        """Append the row's token (end of text or a stop string finishes it), emit it, finish at max tokens."""
        pieces: list[str] = []
        s.st.accept(np.array([tid]), first, self.lm.tokenizer.eot_id, s.opts.stop, lambda b, p: pieces.append(p))
        if s.first_at is None:
            s.first_at = time.perf_counter()
        if s.st.reasons[0] != "eot":
            lp, top = _logprobs(logits, tid, s.t.logprobs) if logits is not None else (None, None)
            s.events.append(Token(tid, "".join(pieces), lp, top))
        if s.st.done[0] or s.todo() <= 0:
            self._finish(s)

    def _finish(self, s: _Slot) -> None:
        if s.finished:
            return
        s.finished = True
        if s.st.reasons[0] != "stop":
            tail: list[str] = []
            s.st.flush(lambda b, p: tail.append(p))
            if tail:
                s.events.append(Token(-1, "".join(tail)))
        reason = "cancelled" if s.t.cancelled and not s.st.done[0] and s.todo() > 0 else \
            {"eot": "stop", "stop": "stop"}.get(s.st.reasons[0], "length")
        now = time.perf_counter()
        s.events.append(Done(text=s.st.texts[0], token_ids=list(s.st.out[0]), prompt_tokens=len(s.t.prompt_ids),
                             finish_reason=reason, ttft_ms=((s.first_at or now) - s.t.submitted) * 1e3,
                             total_ms=(now - s.t.submitted) * 1e3))
        s.flush()
