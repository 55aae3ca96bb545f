"""Run ``edgekit serve``: bind the port, serve the app with uvicorn, drain on SIGTERM/SIGINT and exit 0.

    serve(ServeOptions(model="soma.onnx", port=8080))      # blocks; `edgekit serve soma.onnx` calls it
"""
from __future__ import annotations

import signal
import socket
import sys

from edgekit.errors import EdgekitError
from edgekit.serve.app import ServeOptions, create_app


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a port in use is one clear error (and port 0 picks a free one)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on such sockets' connections; without it
        # every response on a kept-alive connection waited ~40 ms for the client's delayed ACK (Nagle)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as e:
        raise EdgekitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(256)
    sock.set_inheritable(True)
    return sock


def serve(opts: ServeOptions) -> int:
    """Serve until SIGTERM or SIGINT, then stop taking requests, finish those in flight (up to ``opts.drain``
    seconds) and return 0. Raises EdgekitError when the port or the model cannot be opened."""
    import uvicorn

    sock = _listen(opts.host, opts.port)
    app, state = create_app(opts)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=opts.drain)
    server = uvicorn.Server(config)
    state.on_fatal = lambda: setattr(server, "should_exit", True)
    host, port = sock.getsockname()[:2]
    print(f"edgekit serve: listening on http://{host}:{port} ({opts.parallel} slots); loading {opts.model}",
          file=sys.stderr, flush=True)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal under the handlers it found: these
    # no-op ones make that a plain return (exit 0) instead of a kill by the signal or a KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    if state.error:
        raise EdgekitError(f"{opts.model}: {state.error}")
    print("edgekit serve: stopped", file=sys.stderr, flush=True)
    return 0
