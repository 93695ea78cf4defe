"""Prometheus metrics of one server (its own registry, so several servers in one process, as in
tests, do not mix their counts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, queue_depth=lambda: 0, running=lambda: 0):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("lmforge_requests", "HTTP requests answered",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("lmforge_request_latency_seconds",
                                 "time from a request's arrival to its last byte",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("lmforge_prompt_tokens", "prompt tokens prefilled",
                                     registry=r)
        self.generated_tokens = Counter("lmforge_generation_tokens", "tokens generated",
                                        registry=r)
        self.first_token = Histogram("lmforge_time_to_first_token_seconds",
                                     "time from queueing a sequence to its first token",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.step = Histogram("lmforge_inter_token_latency_seconds",
                              "one decoding step: the time between two tokens of a sequence",
                              buckets=STEP_BUCKETS, registry=r)
        self.rejected = Counter("lmforge_rejected_requests", "requests refused: queue full",
                                registry=r)
        Gauge("lmforge_queue_depth", "sequences waiting for a decoding slot",
              registry=r).set_function(queue_depth)
        Gauge("lmforge_running_sequences", "sequences in the running decode batch",
              registry=r).set_function(running)

    def render(self) -> bytes:
        return generate_latest(self.registry)
