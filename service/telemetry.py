"""Prometheus metrics on a registry of the app's own (several apps may live in one test process)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("strop_http_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("strop_http_request_seconds", "HTTP request latency", ["route"],
                                 registry=self.registry,
                                 buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch_size = Histogram("strop_encode_batch_size", "queries per encode micro-batch",
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_seconds = Histogram("strop_encode_batch_seconds", "encode time per micro-batch",
                                       registry=self.registry)
        self.queue_depth = Gauge("strop_encode_queue_depth", "pending query encodes", ["model"],
                                 registry=self.registry)
        self.documents = Gauge("strop_collection_documents", "live documents", ["collection"],
                               registry=self.registry)
        self.cache_lookups = Counter("strop_query_cache_lookups_total", "text queries looked up in the query "
                                     "embedding cache", registry=self.registry)
        self.cache_hits = Counter("strop_query_cache_hits_total", "text queries answered from the query embedding "
                                  "cache (no encode)", registry=self.registry)
        self.cache_ratio = Gauge("strop_query_cache_hit_ratio", "query cache hits / lookups since start",
                                 registry=self.registry)
        self.cache_entries = Gauge("strop_query_cache_entries", "query embeddings cached", ["model"],
                                   registry=self.registry)
        self._lookups = 0
        self._hits = 0
        self.rejected = Counter("strop_overloaded_total", "requests answered 429", registry=self.registry)

    def observe_batch(self, n: int, seconds: float) -> None:
        self.batch_size.observe(n)
        self.batch_seconds.observe(seconds)

    def observe_cache(self, hit: bool) -> None:
        self.cache_lookups.inc()
        self._lookups += 1
        if hit:
            self.cache_hits.inc()
            self._hits += 1

    def render(self, app_state: Any) -> bytes:
        self.cache_ratio.set(self._hits / self._lookups if self._lookups else 0.0)
        manager = getattr(app_state, "manager", None)
        if manager is not None:
            for lm in manager.models.loaded():
                self.queue_depth.labels(lm.key).set(lm.batcher.depth)
                if getattr(lm.batcher, "cache", None) is not None:
                    self.cache_entries.labels(lm.key).set(len(lm.batcher.cache))
            for name in manager.names():
                try:
                    self.documents.labels(name).set(manager.state(name).served.live.ntotal)
                except Exception:
                    pass
        return generate_latest(self.registry)


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000.0
