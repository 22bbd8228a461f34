"""Prometheus metrics, one registry per app (no process-global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
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
        self.unflushed_rows = Gauge("lmops_usage_unflushed_rows",
                                    "Request records (usage rows) in memory, not yet committed: what a kill -9 "
                                    "of this process would lose", registry=r)
        self.usage_implausible = Counter("lmops_usage_implausible",
                                         "Answers whose engine reported token counts that cannot be right (more "
                                         "completion tokens than max_tokens allows, negative or not whole numbers): "
                                         "billed clamped", ["model", "replica", "reason"], registry=r)
        self._series: dict[tuple[str, str, int], _RequestSeries] = {}

    def watch_router(self, router: Router) -> None:
        self.registry.register(_ReplicaCollector(router))

    def watch_unflushed_rows(self, count: Callable[[], int]) -> None:
        """``lmops_usage_unflushed_rows`` reads ``count()`` (the record writer's pending rows) at each scrape."""
        self.unflushed_rows.set_function(count)

    def add_collector(self, collect: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        """Register gauges computed at scrape time (other capabilities use this)."""
        self.registry.register(_FunctionCollector(collect))

    def observe(self, model: str, endpoint: str, status: int, latency: float, ttft: float | None,
                prompt_tokens: int, completion_tokens: int) -> None:
        key = (model, endpoint, status)
        series = self._series.get(key)
        if series is None:  # .labels() costs a lock and a few dict look-ups: once per label set, not per request
            series = self._series[key] = _RequestSeries(self, model, endpoint, status)
        series.requests.inc()
        if series.errors is not None:
            series.errors.inc()
        series.latency.observe(latency)
        if ttft is not None:
            series.child("ttft").observe(ttft)
        if prompt_tokens:
            series.child("tokens_in").inc(prompt_tokens)
        if completion_tokens:
            series.child("tokens_out").inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RequestSeries:
    """The labelled children that one (model, endpoint, status) touches, looked up once.

    The optional ones are created on first use, so that no series appears before it has a value.
    """

    def __init__(self, m: Metrics, model: str, endpoint: str, status: int):
        code = str(status)
        self.requests = m.requests.labels(model, endpoint, code)
        self.errors = m.errors.labels(model, endpoint, code) if status >= 400 else None
        self.latency = m.latency.labels(model, endpoint)
        self._lazy: dict[str, Callable[[], Any]] = {
            "ttft": lambda: m.ttft.labels(model),
            "tokens_in": lambda: m.tokens.labels(model, "in"),
            "tokens_out": lambda: m.tokens.labels(model, "out"),
        }
        self._made: dict[str, Any] = {}

    def child(self, name: str) -> Any:
        made = self._made.get(name)
        if made is None:
            made = self._made[name] = self._lazy[name]()
        return made


class _ReplicaCollector(Collector):
    def __init__(self, router: Router):
        self._router = router

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        inflight = GaugeMetricFamily("lmops_replica_inflight_requests", "Requests in flight per replica",
                                     labels=["model", "replica"])
        queue = GaugeMetricFamily("lmops_replica_queue_depth", "Requests waiting inside the engine",
                                  labels=["model", "replica"])
        healthy = GaugeMetricFamily("lmops_replica_healthy", "1 when the replica is in the pool",
                                    labels=["model", "replica"])
        held = CounterMetricFamily("lmops_replica_breaker_held", "Request failures that would have opened the "
                                   "replica's breaker, kept in the pool as the model's last",
                                   labels=["model", "replica"])
        for dep in self._router.deployments:
            for rep in dep.replicas:
                labels = [dep.name, rep.endpoint]
                inflight.add_metric(labels, rep.outstanding)
                queue.add_metric(labels, rep.engine.queue_depth())
                healthy.add_metric(labels, 1.0 if rep.healthy else 0.0)
                held.add_metric(labels, rep.breaker.held)
        yield from (inflight, queue, healthy, held)


class _FunctionCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[GaugeMetricFamily]]):
        self._collect = collect

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield from self._collect()
