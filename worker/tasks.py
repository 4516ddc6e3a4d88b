"""The one Celery task: take the next waiting item fairly, hold its lease while it runs,
and run it: a job's unit, an audit's report, or a model's inspection."""
from __future__ import annotations

import logging
import os
import time

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init

from shared.backends import start_reaper
from shared.jobs import Finish, JobStatus, Start
from shared.messaging import WORK
from shared.settings import get_settings
from shared.storage import Keys
from worker import metrics
from worker.app import app
from worker.context import WorkerContext
from worker.unit import Cancelled, run_unit

log = logging.getLogger("xaiq.worker")
_ctx: WorkerContext | None = None


def context() -> WorkerContext:
    global _ctx
    if _ctx is None or _ctx.pid != os.getpid():
        _ctx = WorkerContext(get_settings())
    return _ctx


@worker_process_init.connect
def _init_process(**_):
    s = get_settings()
    if s.torch_threads:
        import torch

        torch.set_num_threads(s.torch_threads)
    metrics.serve(s)
    start_reaper(context())


@app.task(name=WORK)
def work() -> str:
    """Run the next waiting item, if any (a token that finds none does nothing)."""
    ctx = context()
    item = ctx.dispatch.take(ctx.settings.lease_s)
    if item is None:
        return "idle"
    with ctx.heartbeat.hold(item):
        RUNNERS[item["kind"]](ctx, item)
    return item["kind"]


def run_unit_item(ctx: WorkerContext, item: dict) -> None:
    """A job's or an audit's unit: started (counted), run with retries, finished once."""
    tenant, job, unit, count = item["tenant"], item["job"], item["unit"], item["count"]
    start = ctx.jobs.start_unit(job, tenant, unit, max_attempts=ctx.settings.unit_retries + 3)
    if start is Start.SKIP:
        after_unit(ctx, item, ctx.jobs.finish_unit(job, tenant, unit, 0, 0, skipped=True))
        return
    t0 = time.perf_counter()
    done, failed, error = attempt(ctx, item) if start is Start.RUN else \
        (0, count, f"unit {unit}: its worker stopped each time it ran it (out of memory?)")
    if done is None:   # cancelled while it ran
        after_unit(ctx, item, ctx.jobs.finish_unit(job, tenant, unit, 0, 0, skipped=True))
        return
    seconds = time.perf_counter() - t0
    metrics.unit_done(done, seconds)
    log.info("job %s unit %d: %d done, %d failed in %.2fs", job, unit, done, failed, seconds)
    after_unit(ctx, item, ctx.jobs.finish_unit(job, tenant, unit, done, failed, error, seconds=seconds))


def attempt(ctx: WorkerContext, item: dict) -> tuple[int | None, int, str]:
    """(done, failed, error) after up to `unit_retries` retries with backoff; done None: cancelled."""
    hook = None
    if item["kind"] == "audit":
        from worker.audit.job import on_batch

        hook = on_batch(ctx.manifest(item["tenant"], item["job"]), Keys(item["tenant"]), item["job"], item["unit"])
    for retry in range(ctx.settings.unit_retries + 1):
        try:
            done, failed = run_unit(ctx, item["tenant"], item["job"], item["unit"], item["first"], item["count"], hook)
            return done, failed, ""
        except Cancelled:
            return None, 0, ""
        except Exception as e:  # noqa: BLE001 - retried, then its images count as failed
            last = e
            log.warning("job %s unit %d failed (try %d): %r", item["job"], item["unit"], retry + 1, e)
            if isinstance(e, SoftTimeLimitExceeded):
                break
            time.sleep(min(2 ** retry, 30))
    first, count = item["first"], item["count"]
    return 0, count, f"unit {item['unit']} (images {first}-{first + count - 1}): {type(last).__name__}"


def after_unit(ctx: WorkerContext, item: dict, outcome: Finish) -> None:
    if outcome is Finish.COMPLETE and item["kind"] == "audit":
        ctx.enqueue(item["tenant"], [{"tenant": item["tenant"], "kind": "report", "job": item["job"]}], front=True)
    elif outcome is Finish.COMPLETE:
        ctx.end_job(item["job"])
    elif outcome is Finish.CANCELLED:
        ctx.end_job(item["job"], JobStatus.CANCELLED)


def run_report(ctx: WorkerContext, item: dict) -> None:
    """An audit's last step: the report, then the audit ends (failed with the reason if it cannot)."""
    from worker.audit.job import write_report

    job, state = item["job"], ctx.jobs.get(item["job"])
    if state is None or state.status.final:
        return
    try:
        report = write_report(ctx, item["tenant"], job)
        log.info("audit %s: report with %d flag(s)", job, len(report["flags"]))
        ctx.end_job(job)
    except Exception as e:  # noqa: BLE001 - the audit fails with the reason
        log.exception("audit %s: report failed", job)
        ctx.end_job(job, JobStatus.FAILED, f"report: {type(e).__name__}")


def run_inspection(ctx: WorkerContext, item: dict) -> None:
    from worker.models.registration import inspect_version

    keys = Keys(None) if item.get("shared") else Keys(item["tenant"])
    inspect_version(ctx.storage, keys, item["model"], item["version"], ctx.settings, ctx.jobs.r)


RUNNERS = {"job": run_unit_item, "audit": run_unit_item, "report": run_report, "inspect": run_inspection}
