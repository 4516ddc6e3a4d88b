"""A bounded load test on loopback: 30 s of locust users submitting small jobs and polling
them against the running stack, with not one error (`bench/load.py` runs longer ones)."""
from __future__ import annotations


def test_thirty_seconds_of_submitting_and_polling_without_an_error(stack, tenant_key, digits_model, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from load import run_locust

    r = run_locust(stack.api_url, tenant_key, seconds=30, users=16, out=tmp_path)
    print(f"load: {r['requests']} requests, {r['polls_per_s']} polls/s, poll p99 {r['poll_p99_ms']:.0f} ms, "
          f"{r['submitted']} jobs submitted")
    assert r["errors"] == 0, r["failures"]
    assert r["requests"] > 500 and r["submitted"] > 5
