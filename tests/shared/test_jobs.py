"""JobStore transitions on a real Redis: each unit counted once, one finaliser, cancel."""
from __future__ import annotations

import threading
import uuid

import pytest


@pytest.fixture()
def store(redis_url):
    from shared.jobs import JobStore
    from shared.settings import Settings

    return JobStore(Settings(redis_url=redis_url))


def new(store, units=3, total=10):
    job = uuid.uuid4().hex
    store.create(job, kind="job", model="m", methods={"saliency": {}}, total=total, units=units)
    return job


def test_finishing_can_be_redone_and_ends_once(store):
    """A worker that dies after the last unit but before finishing leaves 'complete' to
    the next redelivery; the final status is written once and not overwritten."""
    job = new(store, units=1, total=4)
    store.start_unit(job, 0)
    assert store.finish_unit(job, 0, 4, 0) == "complete"
    assert store.finish_unit(job, 0, 4, 0) == "complete"   # redelivered: still not final
    assert store.get(job)["progress"]["done"] == 4
    assert store.set_final(job, "succeeded") is True
    assert store.set_final(job, "failed") is False
    assert store.get(job)["status"] == "succeeded"
    assert store.finish_unit(job, 0, 4, 0) == ""


def test_a_finishing_job_cannot_be_cancelled(store):
    job = new(store, units=1, total=4)
    store.start_unit(job, 0)
    assert store.finish_unit(job, 0, 4, 0) == "complete"   # an audit now writes its report
    assert store.cancel(job) == "running"
    store.set_final(job, "succeeded")
    assert store.get(job)["status"] == "succeeded"


def test_a_unit_that_keeps_dying_is_exhausted(store):
    job = new(store, units=1, total=4)
    assert [store.start_unit(job, 0, max_attempts=3) for _ in range(4)] == ["ok", "ok", "ok", "exhausted"]


def test_cancelled_jobs_expire_and_are_counted(store):
    before = store.stats().get("jobs_cancelled", 0)
    job = new(store)
    assert store.cancel(job) == "cancelled"
    assert 0 < store.r.ttl(f"xaiq:job:{job}") <= 7 * 24 * 3600
    assert store.stats()["jobs_cancelled"] == before + 1


def test_redelivered_unit_counts_once(store):
    job = new(store, units=2, total=8)
    assert store.start_unit(job, 0) == "ok"
    assert store.get(job)["status"] == "running"
    assert store.finish_unit(job, 0, 4, 0) == ""
    assert store.start_unit(job, 0) == "ok"          # redelivered after a lost ack
    assert store.finish_unit(job, 0, 4, 0) == ""
    assert store.get(job)["progress"] == {"total": 8, "done": 4, "failed": 0}
    store.start_unit(job, 1)
    assert store.finish_unit(job, 1, 3, 1, error="bad input") == "complete"
    assert store.get(job)["progress"] == {"total": 8, "done": 7, "failed": 1}
    assert store.get(job)["error"] == "bad input"


def test_concurrent_units_complete_the_job(store):
    job = new(store, units=40, total=40)
    outcomes = []

    def run(u):
        store.start_unit(job, u)
        outcomes.append(store.finish_unit(job, u, 1, 0))

    threads = [threading.Thread(target=run, args=(u,)) for u in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "complete" in outcomes  # whichever call counted the last unit (threads append in any order)
    assert store.get(job)["progress"]["done"] == 40
    assert sum(store.set_final(job, "succeeded") for _ in range(3)) == 1


def test_cancel_waits_for_running_units(store):
    job = new(store, units=3)
    assert store.start_unit(job, 0) == "ok"
    assert store.cancel(job) == "cancelling"
    assert store.get(job)["status"] == "running"
    assert store.start_unit(job, 1) == "cancelled"   # units not yet started are skipped
    assert store.finish_unit(job, 1, 0, 0, skipped=True) == ""
    assert store.finish_unit(job, 0, 3, 0) == "cancelled"
    assert store.get(job)["status"] == "cancelled"


def test_cancel_of_a_queued_job_is_immediate_and_final_jobs_stay(store):
    job = new(store)
    assert store.cancel(job) == "cancelled"
    assert store.get(job)["status"] == "cancelled"
    done = new(store, units=1)
    store.start_unit(done, 0)
    store.finish_unit(done, 0, 10, 0)
    store.set_final(done, "succeeded")
    assert store.cancel(done) == "succeeded"
    assert store.cancel(uuid.uuid4().hex) == "missing"
