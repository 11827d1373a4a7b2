"""Prometheus metrics for one server (own CollectorRegistry, so several apps can live in one process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LAT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TPOT = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


class Metrics:
    def __init__(self, engine: Any) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("llmpress_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.ttft = Histogram("llmpress_time_to_first_token_seconds", "Arrival to first output token", buckets=_LAT,
                              registry=r)
        self.tpot = Histogram("llmpress_time_per_output_token_seconds", "Mean time per output token after the first",
                              buckets=_TPOT, registry=r)
        self.latency = Histogram("llmpress_request_latency_seconds", "End-to-end request latency", buckets=_LAT,
                                 registry=r)
        self.tokens_in = Counter("llmpress_prompt_tokens", "Prompt tokens received", registry=r)
        self.tokens_out = Counter("llmpress_generation_tokens", "Tokens generated", registry=r)
        g = Gauge("llmpress_queue_depth", "Requests waiting for a batch slot", registry=r)
        g.set_function(lambda: engine.num_waiting)
        g = Gauge("llmpress_running_batch_size", "Sequences in the running batch", registry=r)
        g.set_function(lambda: engine.num_running)
        if getattr(engine, "blocks", None) is None:  # a runtime that keeps its own KV cache (onnx exports)
            return
        g = Gauge("llmpress_kv_blocks_used", "KV-cache blocks in use", registry=r)
        g.set_function(lambda: engine.blocks.num_used)
        g = Gauge("llmpress_kv_blocks_total", "KV-cache blocks preallocated", registry=r)
        g.set_function(lambda: engine.blocks.num_blocks)
        g = Gauge("llmpress_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache", registry=r)
        g.set_function(lambda: engine.blocks.hits)

    def render(self) -> bytes:
        return generate_latest(self.registry)
