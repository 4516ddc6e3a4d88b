"""Thin Celery tasks: account the unit, run it (worker.unit), count, finish the job."""
from __future__ import annotations

import logging
import os
import time

from celery.signals import worker_process_init

from shared.messaging import AUDIT_REPORT, AUDIT_UNIT, EXPLAIN_UNIT, INSPECT_MODEL
from shared.settings import get_settings
from worker import metrics
from worker.app import app
from worker.context import WorkerContext
from worker.models.loading import inspect
from worker.unit import Cancelled, finish_job, run_unit

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


def after_unit(ctx: WorkerContext, job: str, outcome: str) -> None:
    if outcome == "complete" and ctx.manifest(job)["kind"] == "audit":
        audit_report.delay(job)  # the audit succeeds once its report is written
    elif outcome in ("complete", "cancelled"):
        finish_job(ctx, job, outcome)


@app.task(name=EXPLAIN_UNIT, bind=True)
def explain_unit(self, job: str, unit: int, first: int, count: int) -> str:
    return run_work_unit(self, job, unit, first, count)


@app.task(name=AUDIT_UNIT, bind=True)
def audit_unit(self, job: str, unit: int, first: int, count: int) -> str:
    from worker.audit.job import on_batch

    return run_work_unit(self, job, unit, first, count, on_batch)


def retry_or_give_up(self, ctx: WorkerContext, e: Exception, what: str) -> None:
    """Retry with backoff while retries are left (raises); else return."""
    if self.request.retries < ctx.settings.unit_retries:
        log.warning("%s failed (try %d), retrying: %r", what, self.request.retries + 1, e)
        raise self.retry(exc=e, countdown=min(2 ** self.request.retries, 30),
                         max_retries=ctx.settings.unit_retries) from e
    log.exception("%s failed after %d retries", what, self.request.retries)


def run_work_unit(self, job: str, unit: int, first: int, count: int, audit_hook=None) -> str:
    ctx = context()
    what = f"job {job} unit {unit}"
    # Retries and redeliveries after a crash both count as starts.
    state = ctx.jobs.start_unit(job, unit, max_attempts=ctx.settings.unit_retries + 3)
    if state not in ("ok", "exhausted"):
        log.info("%s skipped: %s", what, state)
        if state == "cancelled":
            after_unit(ctx, job, ctx.jobs.finish_unit(job, unit, 0, 0, skipped=True))
        return state
    t0, error = time.perf_counter(), ""
    try:
        if state == "exhausted":
            raise RuntimeError("the unit was started too often (its worker died each time?)")
        on_batch = audit_hook(ctx.manifest(job), job, unit) if audit_hook else None
        done, failed = run_unit(ctx, job, unit, first, count, on_batch)
    except Cancelled:
        after_unit(ctx, job, ctx.jobs.finish_unit(job, unit, 0, 0, skipped=True))
        return "cancelled"
    except Exception as e:  # noqa: BLE001 - retried, then its images count as failed
        if state == "ok":
            retry_or_give_up(self, ctx, e, what)
        done, failed, error = 0, count, f"unit {unit} (images {first}-{first + count - 1}): {type(e).__name__}: {e}"
    seconds = time.perf_counter() - t0
    metrics.unit_done(done, seconds)
    log.info("%s: %d done, %d failed in %.2fs", what, done, failed, seconds)
    after_unit(ctx, job, ctx.jobs.finish_unit(job, unit, done, failed, error, seconds=seconds))
    return "ok"


@app.task(name=AUDIT_REPORT, bind=True)
def audit_report(self, job: str) -> str:
    from worker.audit.job import write_report

    ctx = context()
    try:
        report = write_report(ctx, job)
        state = ctx.jobs.get(job)
        ctx.jobs.set_final(job, "failed" if state["progress"]["failed"] else "succeeded")
        finish_job(ctx, job, "final")
    except Exception as e:  # noqa: BLE001 - retried, then the audit fails with the reason
        retry_or_give_up(self, ctx, e, f"audit {job} report")
        ctx.jobs.set_final(job, "failed", f"report: {type(e).__name__}: {e}")
        finish_job(ctx, job, "final")
        return "failed"
    log.info("audit %s: report with %d flag(s)", job, len(report["flags"]))
    return "ok"


@app.task(name=INSPECT_MODEL, ignore_result=False)
def inspect_model(name: str) -> str:
    ctx = context()
    info = inspect(ctx.storage, name, ctx.device)
    log.info("model %s: %s %s", name, info["status"], info.get("error") or "")
    return info["status"]
