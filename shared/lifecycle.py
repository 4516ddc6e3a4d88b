"""A job's life, in one place: created (its manifest stored, its state recorded within the
tenant's limits, its units queued), each unit started and finished (counted once), cancelled,
ended (the final state in Redis once, then in the manifest), and deleted. The API, the
workers and the reaper all go through `JobLifecycle`; `shared.jobs` holds the atomic state
changes in Redis it is built on, `shared.dispatch` the queues."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shared.contracts import JobManifest, Progress, WorkItem
from shared.jobs import Finish, JobState, JobStatus, LimitExceeded, Start
from shared.storage import Keys

if TYPE_CHECKING:
    from shared.backends import Backends

log = logging.getLogger("xaiq")


def unit_items(m: JobManifest) -> list[WorkItem]:
    return [WorkItem(tenant=m.tenant, kind=m.kind, job=m.id, unit=u, first=m.unit_range(u)[0],
                     count=m.unit_range(u)[1]) for u in range(m.units)]


class JobLifecycle:
    def __init__(self, b: "Backends"):
        self.b = b

    # --- created
    def create(self, m: JobManifest, limits: dict) -> None:
        """Store the manifest, record the job (LimitExceeded when the tenant's queued work would
        pass `limits`: then nothing of it is kept) and queue its units."""
        keys = Keys(m.tenant)
        self.b.storage.put_json(keys.job(m.id), m.dump())
        try:
            self.b.jobs.create(m.id, tenant=m.tenant, kind=m.kind, model=m.model, model_version=m.model_version,
                               methods=m.methods, total=m.inputs.count, units=m.units, name=m.name, gflop=m.cost,
                               limits={"jobs": limits["max_tenant_jobs"], "units": limits["max_tenant_units"],
                                       "gflop": limits["max_tenant_gflop"]})
        except LimitExceeded:
            self.delete_objects(m.tenant, m.id)
            raise
        self.b.enqueue(m.tenant, unit_items(m))

    # --- units
    def start_unit(self, item: WorkItem, max_attempts: int) -> Start:
        return self.b.jobs.start_unit(item.job, item.tenant, item.unit, max_attempts)

    def finish_unit(self, item: WorkItem, done: int = 0, failed: int = 0, error: str = "",
                    skipped: bool = False, seconds: float = 0.0) -> None:
        """Count the unit once; the unit that completes the set ends the job (an audit's
        report is queued first), the last unit of a cancelled job ends it cancelled."""
        outcome = self.b.jobs.finish_unit(item.job, item.tenant, item.unit, done, failed, error, skipped, seconds)
        if outcome is Finish.COMPLETE and item.kind == "audit":
            self.b.enqueue(item.tenant, [WorkItem(tenant=item.tenant, kind="report", job=item.job)], front=True)
        elif outcome is Finish.COMPLETE:
            self.end(item.job)
        elif outcome is Finish.CANCELLED:
            self.end(item.job, JobStatus.CANCELLED)

    def cancelled(self, job: str) -> bool:
        return self.b.jobs.cancelled(job)

    # --- cancelled, ended
    def cancel(self, job: str, tenant: str) -> None:
        """No unit starts afterwards; a running one stops at once (the broker, asking between
        answers and while it waits, kills its compute process); ended here when
        none runs. Its waiting items are dropped."""
        if self.b.jobs.cancel(job, tenant) == "cancelled":
            self.end(job, JobStatus.CANCELLED)
        self.b.dispatch.drop_tenant_job(tenant, job)

    def end(self, job: str, status: JobStatus | None = None, error: str | None = None) -> JobState | None:
        """The final status in Redis (once, whoever calls), then in the manifest. `status`
        None: failed if any image failed, else succeeded."""
        state = self.b.jobs.get(job)
        if state is None:
            return None
        if not state.status.final:
            status = status or (JobStatus.FAILED if state.progress.failed else JobStatus.SUCCEEDED)
            self.b.jobs.set_final(job, state.tenant, status, error)
            state = self.b.jobs.get(job)
        self.record(state)
        log.info("job %s %s: %s", job, state.status, state.progress.dump())
        return state

    def record(self, state: JobState) -> None:
        """The job's state into its manifest, the durable record."""
        key = Keys(state.tenant).job(state.id)
        m = JobManifest.model_validate(self.b.storage.get_json(key))
        m = m.model_copy(update={"status": str(state.status), "progress": Progress(**state.progress.dump()),
                                 "started": state.started, "finished": state.finished, "error": state.error})
        self.b.storage.put_json(key, m.dump())

    def end_stuck_cancels(self) -> int:
        """End cancelled jobs whose running units went silent past `cancel_grace_s`."""
        stuck = self.b.jobs.stuck_cancels(self.b.settings.cancel_grace_s)
        for job in stuck:
            self.end(job, JobStatus.CANCELLED)
        return len(stuck)

    # --- deleted
    def delete_objects(self, tenant: str, job: str) -> int:
        """Every stored object of a job: its manifest, inputs, results, audit partials and report."""
        keys, st = Keys(tenant), self.b.storage
        return sum(st.remove_prefix(p) for p in (keys.inputs(job), keys.audits(job), keys.jobs(job)))
