"""``GET /metrics``: Prometheus text through prometheus_client, one registry per server.

    m = Metrics(engine)
    m.requests.labels(route="/v1/completions", status="200").inc()
    text, content_type = m.render()
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TOKEN_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1)


class Metrics:
    """Requests by route and status, tokens in and out, queue depth, busy slots, TTFT and per-token latency."""

    def __init__(self, engine=None):
        disable_created_metrics()  # no *_created series: counters and histograms only
        r = self.registry = CollectorRegistry()
        self.requests = Counter("edgekit_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.prompt_tokens = Counter("edgekit_prompt_tokens", "Prompt tokens read", registry=r)
        self.completion_tokens = Counter("edgekit_completion_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("edgekit_time_to_first_token_seconds", "From request to its first token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.per_token = Histogram("edgekit_time_per_output_token_seconds",
                                   "Mean time per token after the first, per request", buckets=TOKEN_BUCKETS,
                                   registry=r)
        self.queue = Gauge("edgekit_queue_depth", "Requests waiting for a slot", registry=r)
        self.busy = Gauge("edgekit_busy_slots", "Batch rows generating now", registry=r)
        self.slots = Gauge("edgekit_slots", "Batch rows (--parallel)", registry=r)
        if engine is not None:
            self.queue.set_function(lambda: engine.queued)
            self.busy.set_function(lambda: engine.busy)
            self.slots.set(engine.slots)

    def finished(self, prompt_tokens: int, completion_tokens: int, ttft_s: float, total_s: float) -> None:
        """Record one finished generation."""
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(completion_tokens)
        self.ttft.observe(ttft_s)
        if completion_tokens > 1:
            self.per_token.observe((total_s - ttft_s) / (completion_tokens - 1))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
