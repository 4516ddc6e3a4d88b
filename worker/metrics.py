"""Prometheus metrics of a worker process (on XAIQ_WORKER_METRICS_PORT + its index)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

from shared.settings import Settings

UNITS = Counter("xaiq_worker_units", "Work units finished by this worker")
IMAGES = Counter("xaiq_worker_images", "Images explained by this worker")
DEVICE_SECONDS = Counter("xaiq_worker_unit_seconds", "Seconds this worker spent in work units")
COMPUTE_SECONDS = Counter("xaiq_worker_device_seconds", "Seconds the device computed inside this worker's units")
PIPELINE_SECONDS = Counter("xaiq_worker_pipeline_seconds", "Wall seconds of this worker's unit pipelines")
BUSY = Gauge("xaiq_worker_device_busy_ratio", "Fraction of its last unit's time the device computed")


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


def device_time(device_s: float, wall_s: float) -> float:
    """How busy the device was in a unit (device_seconds / pipeline_seconds over time);
    returns the unit's ratio."""
    busy = min(1.0, device_s / max(wall_s, 1e-9))
    COMPUTE_SECONDS.inc(device_s)
    PIPELINE_SECONDS.inc(wall_s)
    BUSY.set(busy)
    return busy
