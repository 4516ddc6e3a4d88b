"""The one Celery app factory and the task name (the API sends tasks by name).

Celery carries only anonymous tokens: each `xaiq.work` message lets a worker take the
next waiting item from the fair dispatcher (`shared.dispatch`), whose leases, not
Celery's redelivery, bring back the work of a process that died."""
from __future__ import annotations

from celery import Celery
from kombu.exceptions import ChannelError

from shared.settings import Settings

WORK = "xaiq.work"


def make_celery(s: Settings) -> Celery:
    app = Celery("xaiq", broker=s.redis_url, backend=None)
    transport = {"visibility_timeout": s.visibility_timeout_s, "socket_timeout": 5, "socket_connect_timeout": 2}
    limit = min(s.task_time_limit_s, s.visibility_timeout_s - 60)
    app.conf.update(
        task_default_queue=s.queue,
        task_routes={"xaiq.*": {"queue": s.queue}},
        # A token is acknowledged after its item ran; a killed worker's token is redelivered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,   # a Redis restart is waited out, however long
        task_time_limit=limit,
        # The soft limit raises inside the item, which then counts its images as failed; the
        # hard limit kills the process, whose lease then lapses.
        task_soft_time_limit=max(1, limit - 60),
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=True,  # Flower shows items as they run
        task_send_sent_event=True,
    )
    return app


def queued_tokens(app: Celery, queue: str) -> int:
    """Messages waiting in the queue, as the broker counts them (kombu's queue declaration,
    which answers with the count; a queue no one declared yet holds none)."""
    with app.connection_for_write() as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except ChannelError:
            return 0
