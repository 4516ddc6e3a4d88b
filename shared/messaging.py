"""The one Celery app factory and the task names (the API sends tasks by name)."""
from __future__ import annotations

from celery import Celery

from shared.settings import Settings

EXPLAIN_UNIT = "xaiq.explain_unit"
INSPECT_MODEL = "xaiq.inspect_model"
AUDIT_UNIT = "xaiq.audit_unit"
AUDIT_REPORT = "xaiq.audit_report"


def make_celery(s: Settings) -> Celery:
    app = Celery("xaiq", broker=s.redis_url, backend=s.redis_url)
    transport = {"visibility_timeout": s.visibility_timeout_s}
    app.conf.update(
        task_default_queue=s.queue,
        task_routes={"xaiq.*": {"queue": s.queue}},
        # A unit is acknowledged after it ran; a killed worker's unit is redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        task_time_limit=min(s.task_time_limit_s, s.visibility_timeout_s - 60),
        # The soft limit raises inside the unit, so it is retried and then counted as
        # failed; the hard limit alone would acknowledge it uncounted.
        task_soft_time_limit=max(1, min(s.task_time_limit_s, s.visibility_timeout_s - 60) - 60),
        task_ignore_result=True,
        result_expires=3600,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,  # Flower shows units as they run
        task_send_sent_event=True,
    )
    return app
