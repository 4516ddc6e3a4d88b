"""Cancellation and crashes with a real worker: no job is lost."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.conftest import wait_final, wait_until

SLOW = {"lime": {"num_samples": 2000, "n_segments": 60}}


def worker_children(stack) -> list[int]:
    main = stack.procs["worker0"].pid
    kids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == main:
                    kids.append(int(p.name))
            except (OSError, IndexError):
                pass
    return kids


def test_cancel_skips_units_not_started(client, digits_model, digit_pngs):
    pngs = digit_pngs[0][:48]
    job = client.submit(pngs, model="digits-cnn", methods=SLOW, unit_size=4)  # 12 units
    wait_until(lambda: client.status(job)["progress"]["done"] > 0, 120, "first unit")
    assert client.cancel(job)["status"] in ("running", "cancelled")
    state = wait_final(client, job)
    assert state["status"] == "cancelled"
    assert 0 < state["progress"]["done"] < 48
    items = list(client.results(job))
    assert {it["status"] for it in items} <= {"done", "pending"}
    assert sum(it["status"] == "done" for it in items) == state["progress"]["done"]


def test_killed_worker_process_loses_no_job(client, stack, digits_model, digit_pngs):
    pngs = digit_pngs[0][:24]
    job = client.submit(pngs, model="digits-cnn", methods=SLOW, unit_size=8)  # 3 units
    wait_until(lambda: client.status(job)["status"] == "running", 120, "a unit to start")
    time.sleep(0.5)
    kids = worker_children(stack)
    assert kids, "the worker has a child process"
    for pid in kids:
        os.kill(pid, signal.SIGKILL)   # the process running the unit dies mid-way
    state = wait_final(client, job, timeout=300)
    assert state["status"] == "succeeded", state
    assert state["progress"] == {"total": 24, "done": 24, "failed": 0}
    assert len([it for it in client.results(job) if it["status"] == "done"]) == 24
