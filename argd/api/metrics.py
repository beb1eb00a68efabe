"""Prometheus metrics of the service: what this API process served, and what the database and the broker
say about everything else.

- HTTP requests are counted here, in each API process, by route *template* (`/v1/jobs/{job_id}`, never
  the raw path, so ids do not explode the label set). Several uvicorn workers in one container share
  their counts through prometheus_client's multiprocess mode when `PROMETHEUS_MULTIPROC_DIR` is set.
- Jobs by status, job and epoch durations, webhook deliveries and worker heartbeats are read from the
  database at scrape time (argd.persistence.stats), and the queue depth from the broker: the workers
  need no port of their own, every host's work is visible through any API process, and a restart loses
  nothing. `argd_up{component}` says whether the database and the broker answered the scrape.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.orm import Session, sessionmaker

from argd.persistence import stats, workers
from argd.persistence.settings import Settings
from argd.worker.dispatch import queue_depth

log = logging.getLogger("argd.api")

# No `_created` series: Prometheus does not need them, and they would double the output.
disable_created_metrics()  # type: ignore[no-untyped-call]
HTTP_REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_REQUESTS = Counter(
    "argd_http_requests",
    "HTTP requests answered, by route template, method and status code",
    ["route", "method", "status"],
    registry=HTTP_REGISTRY,
)
HTTP_DURATION = Histogram(
    "argd_http_request_duration_seconds",
    "Time to answer an HTTP request (a streamed answer counts until its last byte), by route template",
    ["route", "method"],
    registry=HTTP_REGISTRY,
)
UNMATCHED = "unmatched"  # requests no route took (404s of unknown paths, refusals before routing)


class HttpMetrics:
    """ASGI middleware: counts each HTTP request and times it, labelled by the route that handled it."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app fails before it answers

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = str(scope.get("method", ""))
            HTTP_REQUESTS.labels(template, method, str(status)).inc()
            HTTP_DURATION.labels(template, method).observe(time.perf_counter() - started)


class _HttpSource:
    """This process's HTTP metrics, or every process's in multiprocess mode."""

    def collect(self) -> Iterable[Metric]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return merged.collect()
        return HTTP_REGISTRY.collect()

    def describe(self) -> list[Metric]:
        return []


class ScrapeCollector:
    """The metrics read at scrape time from the database and the broker of `settings`."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]):
        self.settings, self.sessions = settings, sessions

    def describe(self) -> list[Metric]:
        return []  # never touch the database when the registry is built

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "argd_up", "Whether the scrape could read this component (1) or not (0)", labels=["component"]
        )
        try:
            with self.sessions() as session:
                families = list(_database_families(session))
        except Exception:
            log.warning("metrics: the database could not be read", exc_info=True)
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
            yield from families
        try:
            depth = queue_depth(self.settings)
        except Exception:
            log.warning("metrics: the broker could not be read", exc_info=True)
            up.add_metric(["broker"], 0)
        else:
            up.add_metric(["broker"], 1)
            gauge = GaugeMetricFamily(
                "argd_queue_depth", "Messages waiting in the broker queue", labels=["queue"]
            )
            gauge.add_metric([self.settings.queue], depth)
            yield gauge
        yield up


def _database_families(session: Session) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("argd_jobs", "Jobs by status", labels=["status"])
    for status, count in stats.jobs_by_status(session).items():
        jobs.add_metric([status], count)
    yield jobs
    yield _histogram(
        "argd_job_duration_seconds",
        "Wall time of succeeded jobs from first start to the end, by method and device",
        stats.job_durations(session),
    )
    yield _histogram(
        "argd_epoch_duration_seconds",
        "Seconds per training epoch (teacher and student phases), by method and device",
        stats.epoch_durations(session),
    )
    deliveries = CounterMetricFamily(
        "argd_webhook_deliveries", "Webhook delivery attempts by outcome", labels=["outcome"]
    )
    for outcome, count in stats.webhook_outcomes(session).items():
        deliveries.add_metric([outcome], count)
    yield deliveries
    beats = GaugeMetricFamily(
        "argd_worker_last_heartbeat_timestamp_seconds",
        "Unix time of each worker's last heartbeat (a worker stopped cleanly drops out)",
        labels=["worker", "queue"],
    )
    for name, queue, seen in workers.last_seen(session):
        beats.add_metric([name, queue], seen.timestamp())
    yield beats


def _histogram(name: str, documentation: str, rows: list[stats.Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["method", "device"])
    for row in rows:
        buckets = [(_le(bound), count) for bound, count in row.buckets] + [("+Inf", row.count)]
        family.add_metric(list(row.labels), buckets, sum_value=row.total)
    return family


def _le(bound: float) -> str:
    return str(int(bound)) if bound.is_integer() else str(bound)


def build_registry(settings: Settings, sessions: sessionmaker[Session]) -> CollectorRegistry:
    """The registry an app's /metrics renders: this process's HTTP metrics and the scrape-time ones."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_HttpSource())
    registry.register(ScrapeCollector(settings, sessions))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format of everything in `registry`."""
    return generate_latest(registry)


def start_metrics_port(settings: Settings, registry: CollectorRegistry) -> Callable[[], None] | None:
    """Serve `registry` on the separate metrics port, if one is set; returns what stops it.

    Of several API processes on one host only the first binds the port; the others log it and go on (with
    multiprocess mode the one that serves shows every process's requests).
    """
    if settings.metrics_port is None:
        return None
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=registry
        )
    except OSError as exc:
        log.info("metrics port %s not bound by this process: %s", settings.metrics_port, exc)
        return None
    log.info("Prometheus metrics on http://%s:%s/metrics", settings.metrics_host, settings.metrics_port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
