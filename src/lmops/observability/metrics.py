"""Prometheus metrics, one registry per app (no process-global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lmops.routing.router import Router

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("lmops_requests", "API requests", ["model", "endpoint", "status"], registry=r)
        self.errors = Counter("lmops_request_errors", "API requests that failed", ["model", "endpoint", "status"],
                              registry=r)
        self.tokens = Counter("lmops_tokens", "Tokens processed", ["model", "direction"], registry=r)
        self.latency = Histogram("lmops_request_latency_seconds", "Request latency", ["model", "endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("lmops_time_to_first_token_seconds", "Time to first token of streams", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.records_dropped = Counter("lmops_request_records_dropped", "Request records dropped (backlog full)",
                                       registry=r)

    def watch_router(self, router: Router) -> None:
        self.registry.register(_ReplicaCollector(router))

    def add_collector(self, collect: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        """Register gauges computed at scrape time (other capabilities use this)."""
        self.registry.register(_FunctionCollector(collect))

    def observe(self, model: str, endpoint: str, status: int, latency: float, ttft: float | None,
                prompt_tokens: int, completion_tokens: int) -> None:
        code = str(status)
        self.requests.labels(model, endpoint, code).inc()
        if status >= 400:
            self.errors.labels(model, endpoint, code).inc()
        self.latency.labels(model, endpoint).observe(latency)
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)
        if prompt_tokens:
            self.tokens.labels(model, "in").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(model, "out").inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ReplicaCollector(Collector):
    def __init__(self, router: Router):
        self._router = router

    def collect(self) -> Iterable[GaugeMetricFamily]:
        inflight = GaugeMetricFamily("lmops_replica_inflight_requests", "Requests in flight per replica",
                                     labels=["model", "replica"])
        queue = GaugeMetricFamily("lmops_replica_queue_depth", "Requests waiting inside the engine",
                                  labels=["model", "replica"])
        healthy = GaugeMetricFamily("lmops_replica_healthy", "1 when the replica is in the pool",
                                    labels=["model", "replica"])
        for dep in self._router.deployments:
            for rep in dep.replicas:
                labels = [dep.name, rep.endpoint]
                inflight.add_metric(labels, rep.outstanding)
                queue.add_metric(labels, rep.engine.queue_depth())
                healthy.add_metric(labels, 1.0 if rep.healthy else 0.0)
        yield from (inflight, queue, healthy)


class _FunctionCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[GaugeMetricFamily]]):
        self._collect = collect

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield from self._collect()
