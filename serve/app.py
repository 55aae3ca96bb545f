"""edgekit serve's HTTP app (Starlette): OpenAI's ``/v1/completions`` (JSON or SSE) over the runtime's
continuous-batching engine, ``/v1/models``, ``/health``, ``/metrics``, and the routes each family declares.

    app, state = create_app(ServeOptions(model="soma.onnx", parallel=8))   # uvicorn serves app (serve/main.py)

What a family serves comes from its runtime module's hooks, never from branches here: ``serve_engine(model,
slots=, max_queue=)`` (a generator: /v1/completions) and ``serve_routes(model)`` (POST path -> handler(body)
-> JSON object; e.g. gpt's /tokenize, seqae's and amn's /v1/embeddings, bytecnn's /v1/word_scores).
The model loads in a thread after the port opens, so ``/health`` answers 503 until it is ready.
Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}`` objects.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgekit.errors import EdgekitError, UsageError
from edgekit.serve import openai_api as api
from edgekit.serve.metrics import Metrics
from edgekit.serve.stream import Collector, events

MAX_BODY = 1 << 20  # bytes of a request body (413 beyond)
MAX_LOGPROBS = 20


@dataclass(frozen=True)
class ServeOptions:
    """`edgekit serve`'s options (the CLI's flags become this at the command boundary)."""

    model: str  # the .onnx file
    host: str = "127.0.0.1"
    port: int = 8080  # 0 = any free port
    parallel: int = 8  # batch rows (slots) generating at once
    max_queue: int = 64  # requests waiting for a slot before 503
    api_key: str | None = None  # required as "Authorization: Bearer KEY" on every route but /health
    threads: int | None = None  # onnxruntime intra-op threads (None = onnxruntime's default: every core)
    timeout: float = 600.0  # seconds one request may take before it is stopped (504)
    drain: float = 30.0  # seconds SIGTERM/SIGINT waits for requests in flight
    defaults: tuple = ()  # (SamplingOptions field, value) pairs: request defaults over the file's


class State:
    """The loaded model, its engine and routes, the metrics, and whether the server is ready."""

    def __init__(self, opts: ServeOptions):
        self.opts = opts
        self.model_id = os.path.splitext(os.path.basename(opts.model))[0]
        self.lm = self.engine = None
        self.routes: dict = {}
        self.metrics = Metrics()
        self.ready = threading.Event()
        self.error: str | None = None
        self.on_fatal = lambda: None  # set by main: stops the server when loading fails
        self.created = int(time.time())

    def load(self) -> None:
        from edgekit.runtime import family_runtime, load

        try:
            self.lm = load(self.opts.model, threads=self.opts.threads)
            if self.opts.defaults:
                if not hasattr(self.lm, "options"):
                    raise UsageError(f"sampling flags apply to text generators; this is a {self.lm.family} model")
                self.lm.defaults = {**getattr(self.lm, "defaults", {}), **dict(self.opts.defaults)}
                self.lm.options()  # the server's sampling defaults are checked like a request's
            hooks = family_runtime(self.lm.family)
            self.routes = hooks.serve_routes(self.lm) if hasattr(hooks, "serve_routes") else {}
            if hasattr(hooks, "serve_engine"):
                self.engine = hooks.serve_engine(self.lm, slots=self.opts.parallel, max_queue=self.opts.max_queue)
                self.engine.start()
            self.metrics = Metrics(self.engine)
            self.ready.set()
            print(f"edgekit serve: {self.model_id} ({self.lm.family}) ready", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001  (reported as the server's one error line, then it stops)
            self.error = f"{type(e).__name__}: {e}" if not isinstance(e, EdgekitError) else str(e)
            self.on_fatal()

    def require_ready(self) -> None:
        if not self.ready.is_set():
            raise api.ApiError(503, "the model is still loading", code="loading", headers={"Retry-After": "1"})

    def check_key(self, request: Request) -> None:
        key = self.opts.api_key
        if not key:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise api.ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                               code="invalid_api_key")


async def read_json(request: Request):
    """The body as JSON: 413 over MAX_BODY bytes (announced or sent), 400 when it is not JSON."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise api.ApiError(413, f"request body over {MAX_BODY:,} bytes", code="body_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise api.ApiError(413, f"request body over {MAX_BODY:,} bytes", code="body_too_large")
    try:
        return json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise api.ApiError(400, "the request body is not valid JSON", code="invalid_json") from None


def _error(e: api.ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _submit(state: State, req: api.CompletionRequest, loop, queue: asyncio.Queue) -> list:
    """Queue every prompt of ``req`` on the engine; events arrive on ``queue`` as (prompt index, [event, ...])."""
    from edgekit.runtime.gpt_batch import QueueFull, Stopped

    tickets = []
    try:
        for i, ids in enumerate(req.prompts):
            emit = (lambda evs, i=i: loop.call_soon_threadsafe(queue.put_nowait, (i, evs)))
            tickets.append(state.engine.submit(ids, req.opts, emit, logprobs=req.logprobs))
    except (QueueFull, Stopped) as e:
        for t in tickets:
            t.cancel()
        raise api.ApiError(503, str(e), code="overloaded", headers={"Retry-After": "1"}) from None
    except UsageError as e:
        raise api.ApiError(400, str(e)) from None
    return tickets


async def completions(request: Request) -> Response:
    state: State = request.app.state.edgekit
    state.check_key(request)
    state.require_ready()
    if state.engine is None:
        raise api.ApiError(404, f"{state.model_id} is a {state.lm.family} model: it does not generate text",
                           code="not_supported")
    req = api.parse_completion(await read_json(request), state.lm, max_logprobs=MAX_LOGPROBS)
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    tickets = _submit(state, req, loop, queue)
    col = Collector(req, state.lm.tokenizer, state.metrics)
    deadline = time.monotonic() + state.opts.timeout
    if req.stream:
        return StreamingResponse(col.sse(events(queue, tickets, deadline), state.model_id),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    async for batch in events(queue, tickets, deadline, request=request):
        for i, ev in batch:
            col.add(i, ev)
    return JSONResponse(col.response(state.model_id))


async def family_route(request: Request) -> Response:
    state: State = request.app.state.edgekit
    state.check_key(request)
    state.require_ready()
    handler = state.routes.get(request.url.path)
    if request.method != "POST" and (handler is not None or request.url.path == "/v1/completions"):
        raise api.ApiError(405, f"{request.url.path} takes POST; got {request.method}", code="method_not_allowed")
    if handler is None:
        raise api.ApiError(404, f"{state.model_id} ({state.lm.family}) does not serve {request.url.path}; it serves "
                                f"{', '.join(['/v1/completions'] * (state.engine is not None) + sorted(state.routes))}",
                           code="not_found")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise api.ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        out = await run_in_threadpool(handler, body)
    except UsageError as e:
        raise api.ApiError(400, str(e), code="invalid_value") from None
    if out.get("object") == "list" and "model" not in out:
        out["model"] = state.model_id
    return JSONResponse(out)


async def health(request: Request) -> Response:
    state: State = request.app.state.edgekit
    if not state.ready.is_set():
        return JSONResponse({"status": "loading model"}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ok"})


async def models(request: Request) -> Response:
    state: State = request.app.state.edgekit
    state.check_key(request)
    state.require_ready()
    card = state.lm.card
    return JSONResponse({"object": "list", "data": [{
        "id": state.model_id, "object": "model", "created": state.created, "owned_by": "edgekit",
        "meta": {"family": state.lm.family, "config": dict(card.config),
                 "scheme": card.quantization.scheme, "routes": sorted(state.routes),
                 "generates": state.engine is not None, "slots": state.opts.parallel}}]})


async def metrics(request: Request) -> Response:
    state: State = request.app.state.edgekit
    state.check_key(request)
    body, ctype = state.metrics.render()
    return Response(body, media_type=ctype)


def _route_label(state: State, path: str) -> str:
    known = {"/health", "/metrics", "/v1/models", "/v1/completions", *state.routes}
    return path if path in known else "other"


class _Counted:
    """ASGI middleware: every response counted in ``edgekit_requests`` by route and status."""

    def __init__(self, app, state: State):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def counted(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.state.metrics.requests.labels(route=_route_label(self.state, scope["path"]),
                                               status=str(status[0])).inc()


async def _api_error(request: Request, e: api.ApiError) -> Response:
    return _error(e)


async def _http_error(request: Request, e: HTTPException) -> Response:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
    return _error(api.ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code=kind))


async def _crash(request: Request, e: Exception) -> Response:
    return _error(api.ApiError(500, f"internal error: {type(e).__name__}: {e}", code="internal_error"))


def create_app(opts: ServeOptions) -> tuple[Starlette, State]:
    """The Starlette app and its state; the model starts loading when the app starts (lifespan)."""
    state = State(opts)

    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=state.load, name="edgekit-load", daemon=True).start()
        yield
        if state.engine is not None:
            await run_in_threadpool(state.engine.stop, opts.drain)

    routes = [Route("/health", health), Route("/v1/health", health), Route("/metrics", metrics),
              Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"]),
              # every other path: the routes the model's family declares (known once it has loaded)
              Route("/{path:path}", family_route, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={api.ApiError: _api_error, HTTPException: _http_error, Exception: _crash})
    app.state.edgekit = state
    app.add_middleware(_Counted, state=state)
    return app, state
