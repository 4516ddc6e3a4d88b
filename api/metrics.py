"""Prometheus metrics at /metrics, read from Redis at scrape time so that every API and
worker process adds to the same numbers. They are the service's totals, with no tenant's
name; even so only the admin key reads them unless `metrics_public` is set."""
from __future__ import annotations

from flask import Flask, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from api import auth
from shared.messaging import queued_tokens

COUNTERS = {
    "jobs_submitted": "Jobs submitted",
    "audits_submitted": "Audits submitted",
    "jobs_succeeded": "Jobs and audits that succeeded",
    "jobs_failed": "Jobs and audits that failed",
    "jobs_cancelled": "Jobs and audits cancelled",
    "units": "Work units finished",
    "unit_seconds": "Seconds spent in work units (sum; divide by units for the mean latency)",
    "images": "Images explained",
    "device_seconds": "Seconds the devices computed inside work units (prediction, methods, audit curves)",
    "pipeline_seconds": "Wall seconds of work units from reading the inputs to the last write",
    "storage_requests": "Storage requests the workers made in work units (reads of inputs, writes of shards)",
}


class RedisCollector:
    def __init__(self, backends):
        self.b = backends

    def collect(self):
        stats = self.b.jobs.stats()
        for name, doc in COUNTERS.items():
            yield CounterMetricFamily(f"xaiq_{name}", doc, value=stats.get(name, 0.0))
        busy = GaugeMetricFamily("xaiq_device_busy_ratio", "How busy the devices were in work units: "
                                 "device_seconds / pipeline_seconds since the counters began")
        busy.add_metric([], stats.get("device_seconds", 0.0) / max(stats.get("pipeline_seconds", 0.0), 1e-9))
        yield busy
        for name, doc, value in (
                ("xaiq_queue_depth", "Work items waiting, all tenants", self.b.dispatch.waiting),
                ("xaiq_items_running", "Work items under a lease (running)", self.b.dispatch.leased),
                ("xaiq_tokens_queued", "Celery messages waiting",
                 lambda: queued_tokens(self.b.celery, self.b.settings.queue))):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], float(value()))
            yield gauge


def init_app(app: Flask) -> None:
    registry = CollectorRegistry()
    registry.register(RedisCollector(app.extensions["xaiq"]))

    @app.get("/metrics")
    def metrics():
        """Service-wide totals, never per tenant; the admin key unless `metrics_public`."""
        if not app.extensions["xaiq"].settings.metrics_public:
            auth.require_admin_key()
        return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")
