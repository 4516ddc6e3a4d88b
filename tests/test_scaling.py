"""Two worker processes share one job."""
from __future__ import annotations

from tests.conftest import wait_final, wait_until


def test_two_workers_both_take_units_of_one_job(client, stack, digits_model, digit_pngs):
    stack.start_worker(1)
    try:
        # Wait until the second worker answers, so both can take units from the start.
        from shared.messaging import make_celery
        from shared.settings import Settings

        app = make_celery(Settings())
        wait_until(lambda: len(app.control.ping(timeout=1.0)) >= 2, 90, "two workers to answer")
        pngs = digit_pngs[0][:48]
        job = client.submit(pngs, model="digits-cnn", methods={"lime": {"num_samples": 300, "n_segments": 40}},
                            unit_size=4)  # 12 units
        state = wait_final(client, job)
        assert state["status"] == "succeeded" and state["progress"]["done"] == 48
        workers = {it["worker"] for it in client.results(job)}
        assert len(workers) == 2, workers
    finally:
        proc = stack.procs.pop("worker1")
        proc.terminate()
        proc.wait(60)
