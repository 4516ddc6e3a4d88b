"""Prometheus metrics at /metrics, read from Redis at scrape time so that every API and
worker process adds to the same numbers."""
from __future__ import annotations

from flask import Flask, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


COUNTERS = {
    "jobs_submitted": "Jobs submitted",
    "audits_submitted": "Audits submitted",
    "jobs_succeeded": "Jobs and audits that succeeded",
    "jobs_failed": "Jobs and audits that failed",
    "jobs_cancelled": "Jobs and audits cancelled",
    "units": "Work units finished",
    "unit_seconds": "Seconds spent in work units (sum; divide by units for the mean latency)",
    "images": "Images explained",
}


class RedisCollector:
    def __init__(self, clients):
        self.clients = clients

    def collect(self):
        stats = self.clients.jobs.stats()
        for name, doc in COUNTERS.items():
            yield CounterMetricFamily(f"xaiq_{name}", doc, value=stats.get(name, 0.0))
        depth = GaugeMetricFamily("xaiq_queue_depth", "Work units waiting in the queue")
        depth.add_metric([], float(self.clients.jobs.r.llen(self.clients.settings.queue)))
        yield depth


def init_app(app: Flask) -> None:
    registry = CollectorRegistry()
    registry.register(RedisCollector(app.extensions["xaiq"]))

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")
