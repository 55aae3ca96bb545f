"""From the engine's events to OpenAI responses: a whole completion, or SSE chunks then ``data: [DONE]``.

    async for batch in events(queue, tickets, deadline):   # [(prompt index, Token | Done), ...] as they arrive
        ...
    col = Collector(req, tokenizer, metrics); col.add(i, ev); col.response(model_id)

Tokens that arrive together (a Loop chunk decodes up to 16 per call) go out as one SSE chunk per prompt:
clients concatenate chunk texts, and one event per chunk instead of per token keeps the event loop's
work per token small on a 2-core machine.
"""
from __future__ import annotations

import asyncio
import json
import time

from edgekit.runtime.gpt_batch import Done, Failed, Token
from edgekit.serve import openai_api as api


async def events(queue: asyncio.Queue, tickets: list, deadline: float, *, request=None):
    """Lists of (index, Token | Done) until every ticket is done. Failed -> ApiError 500; past ``deadline``
    -> ApiError 504. With ``request``, stops when the client left. However it ends, the tickets are cancelled."""
    left = len(tickets)
    try:
        while left:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise api.ApiError(504, "the request took longer than the server's --timeout", code="timeout")
            try:
                first = await asyncio.wait_for(queue.get(), timeout=min(wait, 0.5) if request is not None else wait)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    return
                continue
            lists = [first]
            while not queue.empty():
                lists.append(queue.get_nowait())
            batch = [(i, ev) for i, evs in lists for ev in evs]
            for _, ev in batch:
                if isinstance(ev, Failed):
                    e = ev.error
                    raise api.ApiError(500, f"the runtime failed on this request: {type(e).__name__}: {e}",
                                       code="runtime_error")
                left -= isinstance(ev, Done)
            yield batch
    finally:  # done, failed, timed out or the client left: unfinished rows leave the batch at the next chunk
        for t in tickets:
            t.cancel()


class Collector:
    """One request's choices as they are generated: text, finish reason, log-probabilities, usage."""

    def __init__(self, req: api.CompletionRequest, tokenizer, metrics):
        n = len(req.prompts)
        self.req, self.tokenizer, self.metrics = req, tokenizer, metrics
        self.texts = [req.texts[i] if req.echo else "" for i in range(n)]
        self.lp = [([], [], []) for _ in range(n)]  # per choice: token strings, logprobs, top logprobs
        self.finish: list[str | None] = [None] * n
        self.completion_tokens = [0] * n

    def add(self, i: int, ev) -> tuple[str, dict | None]:
        """Take one event of choice ``i``; returns the text and logprobs it adds."""
        if isinstance(ev, Done):
            self.finish[i] = "length" if ev.finish_reason == "cancelled" else ev.finish_reason
            self.completion_tokens[i] = len(ev.token_ids)
            self.metrics.finished(len(self.req.prompts[i]), len(ev.token_ids), ev.ttft_ms / 1e3, ev.total_ms / 1e3)
            return "", None
        offset = len(self.texts[i])
        self.texts[i] += ev.text
        if ev.logprob is None:
            return ev.text, None
        piece = self.tokenizer.decode([ev.token_id])
        top = {self.tokenizer.decode([t]): lp for t, lp in ev.top}
        for acc, v in zip(self.lp[i], (piece, ev.logprob, top)):
            acc.append(v)
        return ev.text, api.logprobs_block([piece], [ev.logprob], [top], offset)

    def usage(self) -> dict:
        return api.usage(sum(len(p) for p in self.req.prompts), sum(self.completion_tokens))

    def response(self, model: str) -> dict:
        choices = []
        for i, text in enumerate(self.texts):
            lp = None
            if self.req.logprobs or self.lp[i][0]:
                start = len(self.req.texts[i]) if self.req.echo else 0
                lp = api.logprobs_block(*self.lp[i], start)
            choices.append(api.choice(i, text, self.finish[i], lp))
        return api.completion(self.req, model, choices, self.usage())

    def _chunk(self, model: str, choices: list[dict], usage: dict | None = None) -> str:
        return "data: " + json.dumps(api.completion(self.req, model, choices, usage), ensure_ascii=False) + "\n\n"

    async def sse(self, batches, model: str):
        """SSE text: the echoed prompts, one chunk per prompt per batch of tokens, a last chunk with its
        finish_reason, usage (stream_options.include_usage), then ``data: [DONE]``; an error as one
        ``data: {"error": ...}`` event (the openai client raises it as APIError)."""
        if self.req.echo:
            yield self._chunk(model, [api.choice(i, t, None) for i, t in enumerate(self.req.texts)])
        try:
            async for batch in batches:
                for i in dict.fromkeys(i for i, _ in batch):  # prompts in order of first appearance
                    text, lps, finish = "", [], None
                    for j, ev in batch:
                        if j == i:
                            piece, lp = self.add(i, ev)
                            text += piece
                            lps += [lp] if lp else []
                            finish = self.finish[i]
                    merged = None if not lps else api.logprobs_block(
                        sum((b["tokens"] for b in lps), []), sum((b["token_logprobs"] for b in lps), []),
                        sum((b["top_logprobs"] for b in lps), []), lps[0]["text_offset"][0])
                    if text or merged or finish:
                        yield self._chunk(model, [api.choice(i, text, finish, merged)])
        except api.ApiError as e:
            yield "data: " + json.dumps(e.body()) + "\n\n"
            return
        if self.req.include_usage:
            yield self._chunk(model, [], self.usage())
        yield "data: [DONE]\n\n"
