"""The one Celery task: take the next waiting item fairly, hold its lease while it runs,
and run it: a job's unit, an audit's report, or a model's inspection. Every step of a job's
life goes through `shared.lifecycle.JobLifecycle`."""
from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown

from shared.backends import start_reaper
from shared.contracts import WorkItem
from shared.jobs import JobStatus, Start
from shared.messaging import WORK
from shared.settings import get_settings
from shared.storage import Keys
from worker import metrics
from worker.app import app
from worker.compute.client import ComputeFailed
from worker.context import WorkerContext
from worker.inputs import read_images
from worker.unit import Cancelled, Outcome, run_unit

log = logging.getLogger("xaiq.worker")
_ctx: WorkerContext | None = None
MAX_REPORT = 64 << 20


def context() -> WorkerContext:
    global _ctx
    if _ctx is None or _ctx.pid != os.getpid():
        _ctx = WorkerContext(get_settings())
    return _ctx


@worker_process_init.connect
def _init_process(**_):
    metrics.serve(get_settings())
    start_reaper(context())


@worker_process_shutdown.connect
def _stop_compute(**_):
    if _ctx is not None:
        _ctx.compute_pool.close()


@app.task(name=WORK)
def work() -> str:
    """Run the next waiting item, if any (a token that finds none does nothing)."""
    ctx = context()
    item = ctx.dispatch.take(ctx.settings.lease_s)
    if item is None:
        return "idle"
    with ctx.heartbeat.hold(item):
        RUNNERS[item.kind](ctx, item)
    return item.kind


def run_unit_item(ctx: WorkerContext, item: WorkItem) -> None:
    """A job's or an audit's unit: started (counted), run with retries, finished once."""
    life = ctx.lifecycle
    start = life.start_unit(item, max_attempts=ctx.settings.unit_retries + 3)
    if start is Start.SKIP:
        return life.finish_unit(item, skipped=True)
    t0 = time.perf_counter()
    outcome = attempt(ctx, item) if start is Start.RUN else \
        Outcome(0, item.count, f"unit {item.unit}: its worker stopped each time it ran it (out of memory?)")
    if outcome is None:   # cancelled while it ran
        return life.finish_unit(item, skipped=True)
    seconds = time.perf_counter() - t0
    metrics.unit_done(outcome.done, seconds)
    log.info("job %s unit %d: %d done, %d failed in %.2fs", item.job, item.unit, outcome.done, outcome.failed, seconds)
    life.finish_unit(item, outcome.done, outcome.failed, outcome.error, seconds=seconds)


def attempt(ctx: WorkerContext, item: WorkItem) -> Outcome | None:
    """The unit's outcome after up to `unit_retries` retries with backoff (storage or Redis
    trouble); None: cancelled. What the model did (its budgets, its outputs) is not retried:
    the unit's images fail with the reason."""
    for retry in range(ctx.settings.unit_retries + 1):
        try:
            return run_unit(ctx, item)
        except Cancelled:
            return None
        except Exception as e:  # noqa: BLE001 - retried, then its images count as failed
            last = e
            log.warning("job %s unit %d failed (try %d): %r", item.job, item.unit, retry + 1, e)
            if isinstance(e, SoftTimeLimitExceeded):
                break
            time.sleep(min(2 ** retry, 30))
    last_images = f"images {item.first}-{item.first + item.count - 1}"
    return Outcome(0, item.count, f"unit {item.unit} ({last_images}): {type(last).__name__}")


def run_report(ctx: WorkerContext, item: WorkItem) -> None:
    """An audit's last step: the report (built by the model's compute process), then the
    audit ends (failed with the reason if it cannot)."""
    state = ctx.jobs.get(item.job)
    if state is None or state.status.final:
        return
    try:
        report = write_report(ctx, item)
        log.info("audit %s: report with %d flag(s)", item.job, len(report.get("flags", [])))
        ctx.lifecycle.end(item.job)
    except ComputeFailed as e:
        ctx.lifecycle.end(item.job, JobStatus.FAILED, f"report: {e.reason}")
    except Exception as e:  # noqa: BLE001 - the audit fails with the reason
        log.exception("audit %s: report failed", item.job)
        ctx.lifecycle.end(item.job, JobStatus.FAILED, f"report: {type(e).__name__}")


def write_report(ctx: WorkerContext, item: WorkItem) -> dict:
    m = ctx.manifest(item.tenant, item.job)
    keys, st, info = Keys(m.tenant), ctx.storage, ctx.model_info(m)
    partials = {f"partial:{i}": st.get(k) for i, k in enumerate(sorted(st.list(keys.audit_partials(m.id))))}
    if not partials:
        raise ComputeFailed("no image of the audit was explained: there is nothing to report", killed=False)

    def answer(question: dict) -> tuple[dict, dict]:
        wanted = [int(i) for i in question.get("indices", []) if 0 <= int(i) < m.inputs.count][:4096]
        batch = read_images(ctx, m, info, wanted)
        return {"indices": batch.indices}, {"pixels": batch.pixels}

    header = {"op": "report", "meta": {"audit": m.id, "model": m.model, "model_version": m.model_version,
                                       "name": m.name}, "options": m.options, "methods": m.methods,
              "partials": len(partials), "images": m.inputs.count}
    arrays = {k: np.frombuffer(v, np.uint8) for k, v in partials.items()}
    for h, a in ctx.compute(m).call(header, arrays, ctx.unit_budget(m, whole_job=True), answer=answer):
        if h["kind"] == "done":
            raw, html = a.get("report"), a.get("html")
            if raw is None or html is None or raw.nbytes > MAX_REPORT or html.nbytes > MAX_REPORT:
                raise ComputeFailed("the compute process sent no report", killed=False)
            report = json.loads(raw.tobytes())
            st.put_json(keys.report(m.id, "json"), report)
            st.put(keys.report(m.id, "html"), html.tobytes(), "text/html; charset=utf-8")
            return report
    raise ComputeFailed("the compute process sent no report", killed=False)


def run_inspection(ctx: WorkerContext, item: WorkItem) -> None:
    from worker.models.registration import inspect_version

    keys = Keys(None) if item.shared else Keys(item.tenant)
    inspect_version(ctx.storage, keys, item.model, item.version, ctx.settings, ctx.jobs.r)


RUNNERS = {"job": run_unit_item, "audit": run_unit_item, "report": run_report, "inspect": run_inspection}
