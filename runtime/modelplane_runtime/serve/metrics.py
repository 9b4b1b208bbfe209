"""The serving app's own Prometheus metrics, exported next to Ray Serve's.

They go through `ray.serve.metrics`, so Ray adds the deployment, replica and application
tags and exports them on each node's metrics port with the `ray_` prefix, beside Serve's
own (`ray_serve_num_http_requests`, `ray_serve_actual_batch_size`, ...). One scrape
config covers both.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

LATENCY_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
BATCH_BUCKETS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]


class ServeMetrics:
    """Requests, latency, batch size and queue depth of one replica."""

    def __init__(self, *, model: str) -> None:
        self.requests = Counter(
            "modelplane_requests",
            description="Requests answered, by endpoint and HTTP status code.",
            tag_keys=("model", "endpoint", "code"),  # type: ignore[arg-type]  # Ray annotates tuple[str]
        )
        self.requests.set_default_tags({"model": model})
        self.latency = Histogram(
            "modelplane_request_latency_seconds",
            description="Time from a request's arrival in the replica to its answer.",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=("model", "endpoint"),  # type: ignore[arg-type]
        )
        self.latency.set_default_tags({"model": model})
        self.batch_requests = Histogram(
            "modelplane_batch_requests",
            description="Requests answered by one forward pass (dynamic batching).",
            boundaries=BATCH_BUCKETS,
            tag_keys=("model",),
        )
        self.batch_requests.set_default_tags({"model": model})
        self.batch_items = Histogram(
            "modelplane_batch_items",
            description="Inputs in one forward pass (a request may carry several).",
            boundaries=BATCH_BUCKETS,
            tag_keys=("model",),
        )
        self.batch_items.set_default_tags({"model": model})
        self.queue_depth = Gauge(
            "modelplane_queue_depth",
            description="Requests in this replica waiting for a batch to start.",
            tag_keys=("model",),
        )
        self.queue_depth.set_default_tags({"model": model})

    def answered(self, *, endpoint: str, code: int, seconds: float) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "code": str(code)})
        self.latency.observe(seconds, tags={"endpoint": endpoint})

    def batch(self, *, requests: int, items: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_items.observe(items)


TOKEN_LATENCY_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class GenerationMetrics:
    """Tokens, time to first token, inter-token latency and sequences of a
    text-generation replica. The operator reads the tokens counter and the two gauges
    into `status.load` (serve_metrics.py); Serve's autoscaler counts the requests."""

    def __init__(self, *, model: str) -> None:
        self.tokens = Counter(
            "modelplane_generated_tokens",
            description="Tokens generated (every choice of every request).",
            tag_keys=("model",),
        )
        self.tokens.set_default_tags({"model": model})
        self.first_token = Histogram(
            "modelplane_time_to_first_token_seconds",
            description="Time from a request's arrival in the replica to its first token.",
            boundaries=TOKEN_LATENCY_BUCKETS_S,
            tag_keys=("model",),
        )
        self.first_token.set_default_tags({"model": model})
        self.inter_token = Histogram(
            "modelplane_inter_token_latency_seconds",
            description="Time between a sequence's consecutive tokens.",
            boundaries=TOKEN_LATENCY_BUCKETS_S,
            tag_keys=("model",),
        )
        self.inter_token.set_default_tags({"model": model})
        self.running = Gauge(
            "modelplane_sequences_running",
            description="Sequences in this replica's continuous batch.",
            tag_keys=("model",),
        )
        self.running.set_default_tags({"model": model})
        self.waiting = Gauge(
            "modelplane_sequences_waiting",
            description="Sequences waiting for a place in the batch.",
            tag_keys=("model",),
        )
        self.waiting.set_default_tags({"model": model})
