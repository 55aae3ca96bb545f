"""OpenAI's completion request and response shapes: parse and check a request body, build responses,
stream chunks and error objects. Plain functions over dicts (no HTTP here), so every check is one place.

    req = parse_completion(body, lm, max_logprobs=20)        # ApiError (400) on a bad body
    body = completion(rid, model, choices, usage)            # {"object": "text_completion", ...}
    err = ApiError(400, "temperature must be ...", param="temperature").body()

The sampling fields are ``SamplingOptions``' (their HTTP names: ``max_tokens`` for ``max_new_tokens``; llama-server's
``top_k``, ``repeat_penalty`` and ``repeat_last_n``; edgekit's ``heal`` and ``window``), checked by its
``validate``, so the server refuses exactly what ``edgekit infer`` and the Python API refuse.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from edgekit.errors import UsageError
from edgekit.runtime.gpt_sampling import OptionError, SamplingOptions

MAX_PROMPTS = 16  # prompts in one request (a list)
# OpenAI's fields that edgekit takes but only at the value that means "off"
NEUTRAL = {"n": 1, "best_of": 1, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "suffix": None}
OTHER_FIELDS = ("model", "prompt", "stream", "stream_options", "logprobs", "echo", "user", *NEUTRAL)


class ApiError(Exception):
    """An HTTP error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 500: "server_error",
             503: "unavailable_error", 504: "timeout_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


@dataclass
class CompletionRequest:
    prompts: list[list[int]]  # token ids of each prompt
    texts: list[str]  # each prompt as text (for echo)
    opts: SamplingOptions
    stream: bool = False
    logprobs: int = 0
    echo: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: "cmpl-" + uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _prompts(prompt, lm) -> tuple[list[list[int]], list[str]]:
    """A string, a list of strings, a list of token ids, or a list of token-id lists -> (ids, texts)."""
    def is_ids(p):
        return isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)

    if isinstance(prompt, str) or is_ids(prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt or len(prompt) > MAX_PROMPTS:
        raise _bad(f"prompt must be a string, a list of 1 to {MAX_PROMPTS} strings, or token ids", "prompt")
    ids, texts = [], []
    for p in prompt:
        if is_ids(p):
            if any(not 0 <= t < lm.vocab_size for t in p):
                raise _bad(f"prompt token ids must be from 0 to {lm.vocab_size - 1}", "prompt")
            ids.append(list(p))
            texts.append(lm.tokenizer.decode(p))
            continue
        if not isinstance(p, str):
            raise _bad(f"prompt must be a string, a list of 1 to {MAX_PROMPTS} strings, or token ids", "prompt")
        try:
            ids.append(lm.encode(p))
        except UsageError as e:
            raise _bad(str(e), "prompt") from None
        texts.append(p)
    return ids, texts


def _flag(body: dict, name: str) -> bool:
    v = body.get(name)
    if v is not None and not isinstance(v, bool):
        raise _bad(f"{name} must be true or false; got {v!r}", name)
    return bool(v)


def parse_completion(body, lm, *, max_logprobs: int) -> CompletionRequest:
    """Check a ``/v1/completions`` body against OpenAI's fields and ``SamplingOptions``; ApiError(400) if bad."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", code="invalid_json")
    http = SamplingOptions.http_names()
    unknown = [k for k in body if k not in http and k not in OTHER_FIELDS]
    if unknown:
        raise _bad(f"unknown field {unknown[0]!r}; known: {', '.join([*OTHER_FIELDS, *http])}", unknown[0],
                   "unknown_parameter")
    for name, neutral in NEUTRAL.items():
        if body.get(name) not in (None, neutral):
            raise _bad(f"{name} other than {neutral!r} is not supported by edgekit serve; got {body[name]!r}", name,
                       "unsupported_parameter")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise _bad(f"model must be a string; got {body['model']!r}", "model")
    if "prompt" not in body:
        raise _bad("prompt is required", "prompt", "missing_required_parameter")
    stream, echo = _flag(body, "stream"), _flag(body, "echo")
    logprobs = body.get("logprobs")
    if logprobs is not None and (not isinstance(logprobs, int) or isinstance(logprobs, bool)
                                 or not 0 <= logprobs <= max_logprobs):
        raise _bad(f"logprobs must be an integer from 0 to {max_logprobs}; got {logprobs!r}", "logprobs")
    if echo and logprobs is not None:
        raise _bad("echo with logprobs is not supported (the graph returns the last position's logits only)",
                   "echo", "unsupported_parameter")
    so = body.get("stream_options")
    if so is not None and not (isinstance(so, dict) and set(so) <= {"include_usage"}
                               and isinstance(so.get("include_usage", False), bool)):
        raise _bad('stream_options must be {"include_usage": true|false}', "stream_options")
    given = {http[k]: v for k, v in body.items() if k in http}
    try:
        opts = SamplingOptions.resolve(given, defaults=lm.defaults)
        opts.validate(lm.vocab_size)
    except OptionError as e:
        name = next(k for k, f in http.items() if f == e.option)
        raise _bad(f"{name} must be {e.valid}; got {e.value!r}", name) from None
    ids, texts = _prompts(body["prompt"], lm)
    return CompletionRequest(ids, texts, opts, stream=stream, logprobs=0 if logprobs is None else logprobs,
                             echo=echo, include_usage=bool((so or {}).get("include_usage")))


def logprobs_block(tokens: list[str], lps: list[float], tops: list[dict], offset: int) -> dict:
    """OpenAI's completion ``logprobs`` object for generated tokens starting at text offset ``offset``."""
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


def completion(req: CompletionRequest, model: str, choices: list[dict], usage: dict | None) -> dict:
    """A completion (or, with ``usage`` None, a stream chunk) in OpenAI's ``text_completion`` shape."""
    out = {"id": req.id, "object": "text_completion", "created": req.created, "model": model, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
