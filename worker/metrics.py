"""Prometheus metrics of a worker process (on XAIQ_WORKER_METRICS_PORT + its index)."""
from __future__ import annotations

from prometheus_client import Counter, start_http_server

from shared.settings import Settings

UNITS = Counter("xaiq_worker_units", "Work units finished by this worker")
IMAGES = Counter("xaiq_worker_images", "Images explained by this worker")
DEVICE_SECONDS = Counter("xaiq_worker_unit_seconds", "Seconds this worker spent in work units")


def serve(s: Settings) -> None:
    if not s.worker_metrics_port:
        return
    from celery import current_process

    index = getattr(current_process(), "index", 0) or 0
    try:
        start_http_server(s.worker_metrics_port + index)
    except OSError:  # port taken (another worker on this host): go without
        pass


def unit_done(images: int, seconds: float) -> None:
    UNITS.inc()
    IMAGES.inc(images)
    DEVICE_SECONDS.inc(seconds)
