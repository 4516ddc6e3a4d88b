"""JobStore and Dispatcher on a real Redis: each unit counted once, one way to end a job,
cancel wins over completion, tenants' usage and limits, fair turns, leases that lapse."""
from __future__ import annotations

import threading
import time
import uuid

import pytest

from shared.contracts import WorkItem
from shared.jobs import Finish, JobStatus, LimitExceeded, Start


@pytest.fixture()
def store(redis_url):
    """A job store on keys of its own (a prefix per test): a running stack's keys are never touched."""
    from shared.jobs import JobStore
    from shared.settings import Settings

    return JobStore(Settings(redis_url=redis_url, redis_prefix=f"test{uuid.uuid4().hex[:12]}"))


@pytest.fixture()
def dispatch(store):
    from shared.dispatch import Dispatcher

    return Dispatcher(store.r, store.k)


def item(tenant: str, kind: str = "job", **kw) -> WorkItem:
    return WorkItem(tenant=tenant, kind=kind, **kw)


def new(store, units=3, total=10, tenant="t1", gflop=30.0, limits=None):
    job = uuid.uuid4().hex
    store.create(job, tenant=tenant, kind="job", model="m", methods={"saliency": {}}, total=total, units=units,
                 gflop=gflop, limits=limits)
    return job


def test_ending_can_be_redone_and_happens_once(store):
    """A worker that dies after the last unit but before ending leaves 'complete' to the
    next one; the final status is written once and not overwritten."""
    job = new(store, units=1, total=4)
    assert store.start_unit(job, "t1", 0) is Start.RUN
    assert store.finish_unit(job, "t1", 0, 4, 0) is Finish.COMPLETE
    assert store.finish_unit(job, "t1", 0, 4, 0) is Finish.COMPLETE   # again: still not ended
    assert store.get(job).progress.done == 4
    assert store.set_final(job, "t1", JobStatus.SUCCEEDED) is True
    assert store.set_final(job, "t1", JobStatus.FAILED) is False
    assert store.get(job).status is JobStatus.SUCCEEDED
    assert store.finish_unit(job, "t1", 0, 4, 0) is Finish.NOTHING


def test_a_cancel_wins_over_completion(store):
    """The last unit finishes after the cancel was answered: the job ends cancelled, with
    the images that unit finished counted."""
    job = new(store, units=1, total=4)
    store.start_unit(job, "t1", 0)
    assert store.cancel(job, "t1") == "cancelling"
    assert store.finish_unit(job, "t1", 0, 4, 0) is Finish.CANCELLED
    state = store.get(job)
    assert state.status is JobStatus.CANCELLED and state.progress.done == 4


def test_a_unit_that_keeps_dying_is_exhausted(store):
    job = new(store, units=1, total=4)
    assert [store.start_unit(job, "t1", 0, max_attempts=3) for _ in range(4)] == [Start.RUN] * 3 + [Start.EXHAUSTED]


def test_cancelled_jobs_expire_and_are_counted(store):
    before = store.stats().get("jobs_cancelled", 0)
    job = new(store)
    assert store.cancel(job, "t1") == "cancelled"
    assert 0 < store.r.ttl(store.k.job(job)) <= 7 * 24 * 3600
    assert store.stats()["jobs_cancelled"] == before + 1


def test_a_unit_run_twice_counts_once(store):
    job = new(store, units=2, total=8)
    assert store.start_unit(job, "t1", 0) is Start.RUN
    assert store.get(job).status is JobStatus.RUNNING
    assert store.finish_unit(job, "t1", 0, 4, 0) is Finish.NOTHING
    assert store.start_unit(job, "t1", 0) is Start.RUN          # queued again after its lease lapsed
    assert store.finish_unit(job, "t1", 0, 4, 0) is Finish.NOTHING
    assert store.get(job).progress.done == 4
    store.start_unit(job, "t1", 1)
    assert store.finish_unit(job, "t1", 1, 3, 1, error="bad input") is Finish.COMPLETE
    state = store.get(job)
    assert (state.progress.done, state.progress.failed, state.error) == (7, 1, "bad input")


def test_concurrent_units_complete_the_job(store):
    job = new(store, units=40, total=40)
    outcomes = []

    def run(u):
        store.start_unit(job, "t1", u)
        outcomes.append(store.finish_unit(job, "t1", u, 1, 0))

    threads = [threading.Thread(target=run, args=(u,)) for u in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Finish.COMPLETE in outcomes
    assert store.get(job).progress.done == 40
    assert sum(store.set_final(job, "t1", JobStatus.SUCCEEDED) for _ in range(3)) == 1


def test_cancel_waits_for_running_units_and_skips_the_rest(store):
    job = new(store, units=3)
    assert store.start_unit(job, "t1", 0) is Start.RUN
    assert store.cancel(job, "t1") == "cancelling"
    assert store.get(job).status is JobStatus.RUNNING
    assert store.start_unit(job, "t1", 1) is Start.SKIP          # no unit starts after a cancel
    assert store.finish_unit(job, "t1", 1, 0, 0, skipped=True) is Finish.NOTHING
    assert store.finish_unit(job, "t1", 0, 3, 0) is Finish.CANCELLED
    assert store.get(job).status is JobStatus.CANCELLED
    assert job not in store.stuck_cancels(0)


def test_cancel_of_a_queued_job_is_immediate_and_final_jobs_stay(store):
    job = new(store)
    assert store.cancel(job, "t1") == "cancelled"
    assert store.get(job).status is JobStatus.CANCELLED
    done = new(store, units=1)
    store.start_unit(done, "t1", 0)
    store.finish_unit(done, "t1", 0, 10, 0)
    store.set_final(done, "t1", JobStatus.SUCCEEDED)
    assert store.cancel(done, "t1") == "succeeded"
    assert store.cancel(uuid.uuid4().hex, "t1") == "missing"


def test_a_tenants_usage_follows_its_jobs(store):
    tenant = f"u{uuid.uuid4().hex[:8]}"
    a = new(store, units=4, total=8, tenant=tenant, gflop=40.0)
    b = new(store, units=2, total=4, tenant=tenant, gflop=10.0)
    assert store.usage(tenant) == {"jobs": 2, "units": 6, "gflop": 50.0}
    store.start_unit(a, tenant, 0)
    store.finish_unit(a, tenant, 0, 2, 0)
    assert store.usage(tenant) == {"jobs": 2, "units": 5, "gflop": 40.0}
    store.cancel(a, tenant)          # nothing of it runs: it ends and frees what it held
    assert store.usage(tenant) == {"jobs": 1, "units": 2, "gflop": 10.0}
    for u in range(2):
        store.start_unit(b, tenant, u)
        store.finish_unit(b, tenant, u, 2, 0)
    store.set_final(b, tenant, JobStatus.SUCCEEDED)
    assert store.usage(tenant) == {"jobs": 0, "units": 0, "gflop": 0.0}
    assert store.ids(tenant) == [b, a] and store.ids("someone-else") == []


def test_limits_refuse_atomically(store):
    tenant = f"u{uuid.uuid4().hex[:8]}"
    limits = {"jobs": 3, "units": 10, "gflop": 100.0}
    new(store, units=6, tenant=tenant, gflop=60.0, limits=limits)
    with pytest.raises(LimitExceeded) as e:
        new(store, units=6, tenant=tenant, gflop=10.0, limits=limits)
    assert (e.value.what, e.value.current, e.value.adding, e.value.limit) == ("units", 6, 6, 10)
    with pytest.raises(LimitExceeded) as e:
        new(store, units=1, tenant=tenant, gflop=50.0, limits=limits)
    assert e.value.what == "gflop"
    assert store.usage(tenant)["jobs"] == 1          # refused jobs hold nothing


def test_tenants_take_turns(dispatch):
    dispatch.push("big", [item("big", job="A", unit=u) for u in range(50)])
    dispatch.push("small", [item("small", job="B", unit=u) for u in range(2)])
    order = [dispatch.take(30).job for _ in range(6)]
    assert order == ["A", "B", "A", "B", "A", "A"]
    assert dispatch.waiting() == 46 and dispatch.leased() == 6


def test_front_items_go_first(dispatch):
    dispatch.push("t", [item("t", job="A", unit=u) for u in range(3)])
    dispatch.push("t", [item("t", "inspect", model="m", version="v")], front=True)
    assert dispatch.take(30).kind == "inspect"


def test_a_lapsed_lease_brings_the_item_back_once(dispatch, store):
    dispatch.push("t", [item("t", job="J", unit=0)])
    taken = dispatch.take(lease_s=0.2)
    assert dispatch.take(30) is None
    time.sleep(0.3)
    assert dispatch.reap() == 1
    assert dispatch.reap() == 0
    again = dispatch.take(30)
    assert again == taken
    assert dispatch.renew(again, 30) is True
    dispatch.release(again)
    assert dispatch.renew(again, 30) is False and dispatch.leased() == 0


def test_dropping_a_cancelled_jobs_items_keeps_the_others_in_order(dispatch):
    dispatch.push("t", [item("t", job=j, unit=u) for u in range(3) for j in ("A", "B")])
    assert dispatch.drop_tenant_job("t", "A") == 3
    assert dispatch.drop_tenant_job("t", "A") == 0
    assert [(it.job, it.unit) for it in iter(lambda: dispatch.take(30), None)] == [("B", 0), ("B", 1), ("B", 2)]
