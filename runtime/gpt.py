"""GPT inference over edgekit's single prefill+decode KV-cache graph, numpy and onnxruntime only.

    lm = edgekit.runtime.load("phase3.onnx", threads=1)
    g = lm.generate("def get_", max_new_tokens=48)           # greedy; g.text, g.token_ids, g.tokens_per_s
    for piece in lm.stream("import ", temperature=0.8, seed=1):
        print(piece, end="")
    lm.generate_batch(["import ", "class "], max_new_tokens=16)

Graph contract: inputs ``input_ids`` (B, T) int64, ``attention_mask`` (B, P+T) int64 (0 = left padding),
``past.{i}.key|value`` (B, heads, P, head_size); outputs ``logits`` (B, vocab) for the last position and
``present.{i}.key|value`` (B, heads, P+T, head_size). Presents stay OrtValues and are bound as the next
step's pasts through IOBinding, so the cache is never converted to numpy.

Sliding window: the model never sees more than ``block_size`` tokens. When prompt plus completion would
exceed it, the context is re-encoded from its last ``block_size - block_size // 4`` tokens (positions
restart at 0, as in training windows), so the window slides by a quarter block at a time and only one
prefill happens every ``block_size // 4`` generated tokens.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from edgekit.errors import UsageError
from edgekit.runtime.tokenizer import Tokenizer, from_spec

MAX_NEW_TOKENS_LIMIT = 100_000


@dataclass
class Generation:
    """One completion with its timing."""

    text: str  # the completion (prompt not included)
    token_ids: list[int]  # generated ids
    prompt_ids: list[int]  # the prompt's ids (all of them, even if the window kept fewer)
    ttft_ms: float  # prompt encoding + prefill + first token
    tokens_per_s: float  # generated tokens per second after the first token (decode rate)
    total_ms: float  # whole generation
    stop_reason: str = "length"  # length | stop | eot
    window_slides: int = 0  # how many times the sliding window re-encoded the context

    def to_dict(self) -> dict:
        return {"completion": self.text, "token_ids": self.token_ids, "prompt_ids": self.prompt_ids,
                "tokens_per_s": self.tokens_per_s, "ttft_ms": self.ttft_ms, "total_ms": self.total_ms,
                "stop_reason": self.stop_reason, "window_slides": self.window_slides}


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def validate(self, vocab: int) -> None:
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) \
                or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise UsageError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS_LIMIT:,}; got {self.max_new_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 100 and np.isfinite(self.temperature)):
            raise UsageError(f"temperature must be between 0 (greedy) and 100; got {self.temperature!r}")
        if self.top_k is not None and not (isinstance(self.top_k, int) and 1 <= self.top_k <= vocab):
            raise UsageError(f"top_k must be an integer from 1 to the vocabulary size {vocab}; got {self.top_k!r}")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise UsageError(f"top_p must be in (0, 1]; got {self.top_p!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise UsageError("stop strings must be non-empty text")


def sample_next(logits: np.ndarray, opts: SamplingOptions, rng: np.random.Generator) -> np.ndarray:
    """Next ids (B,) from logits (B, V): argmax, or temperature / top-k / top-p sampling, vectorized."""
    if opts.temperature == 0:
        return logits.argmax(axis=-1)
    z = logits.astype(np.float64) / opts.temperature
    if opts.top_k is not None and opts.top_k < z.shape[-1]:
        kth = np.partition(z, -opts.top_k, axis=-1)[:, -opts.top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    if opts.top_p is not None and opts.top_p < 1:
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, axis=-1)
        keep_sorted = (np.cumsum(sorted_p, axis=-1) - sorted_p) < opts.top_p  # always keeps the top token
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    u = rng.random((p.shape[0], 1))
    return (np.cumsum(p, axis=-1) < u).sum(axis=-1).clip(max=p.shape[-1] - 1)


class GPTModel:
    """A loaded GPT model file: thread-safe (each call keeps its own cache and random state)."""

    family = "gpt"

    def __init__(self, sess: ort.InferenceSession, meta: dict, *, path: str = "", threads: int | None = None):
        self.session, self.meta, self.path, self.threads = sess, meta, path, threads
        cfg = meta["config"]
        self.block_size = int(cfg["block_size"])
        self.n_layer, self.n_head = int(cfg["n_layer"]), int(cfg["n_head"])
        self.head_size = int(cfg["n_embd"]) // self.n_head
        self.tokenizer: Tokenizer = from_spec(meta["tokenizer"])
        self.vocab_size = int(meta.get("vocab_size", cfg["vocab_size"]))
        self._past_names = [f"past.{i}.{kv}" for i in range(self.n_layer) for kv in ("key", "value")]
        self._present_names = [f"present.{i}.{kv}" for i in range(self.n_layer) for kv in ("key", "value")]
        inputs = {i.name for i in sess.get_inputs()}
        missing = {"input_ids", "attention_mask", *self._past_names} - inputs
        if missing:
            from edgekit.errors import ModelFileError

            raise ModelFileError(f"{path}: graph lacks inputs {sorted(missing)[:4]}; not an edgekit GPT export")
        self.defaults = meta.get("generation", {})
        self._keep = self.block_size - self.block_size // 4

    # ----- the decode engine -------------------------------------------------------------------
    def _empty_past(self, batch: int) -> list[ort.OrtValue]:
        z = np.zeros((batch, self.n_head, 0, self.head_size), dtype=np.float32)
        return [ort.OrtValue.ortvalue_from_numpy(z) for _ in self._past_names]

    def _step(self, ids: np.ndarray, mask: np.ndarray, past: list[ort.OrtValue]):
        """One graph call: (B, T) ids -> logits (B, V) numpy and presents as OrtValues."""
        io = self.session.io_binding()
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("attention_mask", mask)
        for name, v in zip(self._past_names, past):
            io.bind_ortvalue_input(name, v)
        io.bind_output("logits", "cpu")
        for name in self._present_names:
            io.bind_output(name, "cpu")
        self.session.run_with_iobinding(io)
        outs = io.get_outputs()
        return outs[0].numpy(), outs[1:]

    def _prefill(self, rows: list[list[int]]):
        """Left-pad rows to one length and run them; returns logits, presents, mask."""
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for b, r in enumerate(rows):
            ids[b, width - len(r):] = r
            mask[b, width - len(r):] = 1
        logits, past = self._step(ids, mask, self._empty_past(len(rows)))
        return logits, past, mask

    def _run(self, prompts_ids: list[list[int]], opts: SamplingOptions, on_token=None):
        """Generate for a batch; on_token(b, id) is called as ids are produced. Returns per-row results."""
        opts.validate(self.vocab_size)
        B = len(prompts_ids)
        rng = np.random.default_rng(opts.seed)
        eot = self.tokenizer.eot_id
        rows = [list(p[-self._keep:]) if len(p) > self._keep else list(p) for p in prompts_ids]
        out: list[list[int]] = [[] for _ in range(B)]
        done = np.zeros(B, dtype=bool)
        reasons = ["length"] * B
        texts = [""] * B
        decoders = [self.tokenizer.stream_decoder() for _ in range(B)]
        slides = 0
        t0 = time.perf_counter()
        logits, past, mask = self._prefill(rows)
        ttft = None
        ones = np.ones((B, 1), dtype=np.int64)
        for step in range(opts.max_new_tokens):
            nxt = sample_next(logits[:, : self.vocab_size], opts, rng)
            for b in range(B):
                if done[b]:
                    continue
                tid = int(nxt[b])
                if eot is not None and tid == eot:
                    done[b], reasons[b] = True, "eot"
                    continue
                out[b].append(tid)
                rows[b].append(tid)
                piece = decoders[b].push(tid)
                texts[b] += piece
                if opts.stop and any(s in texts[b] for s in opts.stop):
                    cut = min(texts[b].find(s) for s in opts.stop if s in texts[b])
                    piece = piece[: max(0, len(piece) - (len(texts[b]) - cut))]
                    texts[b] = texts[b][:cut]
                    done[b], reasons[b] = True, "stop"
                if on_token is not None and piece:
                    on_token(b, piece)
            if ttft is None:
                ttft = time.perf_counter() - t0
            if done.all() or step == opts.max_new_tokens - 1:
                break
            if mask.shape[1] + 1 > self.block_size:  # slide the window: re-encode the last _keep tokens
                slides += 1
                rows = [r[-self._keep:] for r in rows]
                logits, past, mask = self._prefill(rows)
                continue
            mask = np.concatenate([mask, ones], axis=1)
            logits, past = self._step(nxt.astype(np.int64).reshape(B, 1), mask, past)
        total = time.perf_counter() - t0
        for b in range(B):
            tail = decoders[b].flush()
            if tail and reasons[b] != "stop":
                texts[b] += tail
                if on_token is not None:
                    on_token(b, tail)
        n_after_first = max(max(len(o) for o in out) - 1, 0)
        rate = n_after_first / (total - ttft) if ttft is not None and total > ttft and n_after_first else 0.0
        return [Generation(text=texts[b], token_ids=out[b], prompt_ids=list(prompts_ids[b]),
                           ttft_ms=(ttft or total) * 1e3, tokens_per_s=rate, total_ms=total * 1e3,
                           stop_reason=reasons[b], window_slides=slides) for b in range(B)]

    # ----- public API ----------------------------------------------------------------------------
    def _opts(self, max_new_tokens, temperature, top_k, top_p, seed, stop) -> SamplingOptions:
        d = self.defaults
        stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
        return SamplingOptions(max_new_tokens=d.get("max_new_tokens", 64) if max_new_tokens is None else max_new_tokens,
                               temperature=d.get("temperature", 0.0) if temperature is None else temperature,
                               top_k=top_k, top_p=top_p, seed=seed, stop=stop)

    def encode(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise UsageError(f"prompt must be text; got {type(prompt).__name__}")
        if not prompt:
            raise UsageError("prompt is empty; give at least one character")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("prompt is not valid UTF-8 text (it has undecodable bytes)") from None
        return self.tokenizer.encode(prompt)

    def generate(self, prompt: str, *, max_new_tokens: int | None = None, temperature: float | None = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop=None) -> Generation:
        """Complete ``prompt``; greedy by default (deterministic), ``seed`` makes sampling repeatable."""
        opts = self._opts(max_new_tokens, temperature, top_k, top_p, seed, stop)
        return self._run([self.encode(prompt)], opts)[0]

    def stream(self, prompt: str, *, max_new_tokens: int | None = None, temperature: float | None = 0.0,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None, stop=None):
        """Yield text pieces as they are decoded (whole UTF-8 characters only); returns the Generation."""
        import queue
        import threading

        opts = self._opts(max_new_tokens, temperature, top_k, top_p, seed, stop)
        ids = self.encode(prompt)
        q: queue.Queue = queue.Queue()
        result: list = []

        def work():
            try:
                result.append(self._run([ids], opts, on_token=lambda b, piece: q.put(piece))[0])
            except BaseException as e:  # re-raised in the consumer's thread
                result.append(e)
            q.put(None)

        threading.Thread(target=work, daemon=True).start()
        while (piece := q.get()) is not None:
            yield piece
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def generate_batch(self, prompts: list[str], *, max_new_tokens: int | None = None,
                       temperature: float | None = 0.0, top_k: int | None = None, top_p: float | None = None,
                       seed: int | None = None, stop=None) -> list[Generation]:
        """Complete several prompts in one batch (left-padded); each row stops on its own."""
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise UsageError("generate_batch needs a non-empty list of prompts")
        opts = self._opts(max_new_tokens, temperature, top_k, top_p, seed, stop)
        return self._run([self.encode(p) for p in prompts], opts)


def load(sess: ort.InferenceSession, meta: dict, *, path: str = "", threads: int | None = None) -> GPTModel:
    return GPTModel(sess, meta, path=path, threads=threads)


def infer_cli(model: GPTModel, inputs: list[str], opts: dict) -> int:
    """`edgekit infer MODEL PROMPT`: stream to stdout, or one JSON object with --json."""
    if len(inputs) != 1:
        raise UsageError(f"give exactly one prompt (quote it, or '-' to read stdin); got {len(inputs)} arguments")
    prompt = inputs[0]
    if prompt == "-":
        data = sys.stdin.buffer.read()
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"stdin is not valid UTF-8 (byte {e.start}); give UTF-8 text") from None
    kwargs = dict(max_new_tokens=opts.get("max_new_tokens"), temperature=opts.get("temperature"),
                  top_k=opts.get("top_k"), top_p=opts.get("top_p"), seed=opts.get("seed"), stop=opts.get("stop"))
    if opts.get("json"):
        g = model.generate(prompt, **kwargs)
        sys.stdout.write(json.dumps(g.to_dict(), ensure_ascii=False) + "\n")
        return 0
    sys.stdout.write(prompt)
    sys.stdout.flush()
    gen = model.stream(prompt, **kwargs)
    for piece in gen:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
