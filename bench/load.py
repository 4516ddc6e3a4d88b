"""A bounded load test on loopback: locust users submit small jobs and poll them for a fixed
time against a running xaiq (or a single-machine stack started here); prints polls per
second, latencies (median, p99) and errors, and writes bench/results/load.json.

    .venv/bin/python bench/load.py                       # starts a stack, 60 s, 20 users
    .venv/bin/python bench/load.py --server URL --key K  # against a running server
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_locust(server: str, key: str, seconds: int, users: int, out: Path) -> dict:
    """Locust headless in its own process (it patches the standard library); its CSV stats."""
    prefix = out / "locust"
    env = {**os.environ, "XAIQ_API_KEY": key}
    subprocess.run([str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "bench/locustfile.py"),
                    "--headless", "--host", server, "-u", str(users), "-r", str(users), "-t", f"{seconds}s",
                    "--csv", str(prefix), "--only-summary", "--stop-timeout", "10"],
                   env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 120)
    rows = {r["Name"]: r for r in csv.DictReader(open(f"{prefix}_stats.csv"))}
    failures = list(csv.DictReader(open(f"{prefix}_failures.csv")))
    return summarise(rows, failures, seconds)


def summarise(rows: dict, failures: list, seconds: int) -> dict:
    poll, total = rows["GET /v1/jobs/{id}"], rows["Aggregated"]
    return {
        "seconds": seconds,
        "requests": int(total["Request Count"]), "errors": int(total["Failure Count"]),
        "polls_per_s": round(int(poll["Request Count"]) / seconds, 1),
        "poll_median_ms": float(poll["Median Response Time"]), "poll_p99_ms": float(poll["99%"]),
        "all_p99_ms": float(total["99%"]),
        "submitted": int(rows["POST /v1/jobs"]["Request Count"]) if "POST /v1/jobs" in rows else 0,
        "failures": [f"{f['Method']} {f['Name']}: {f['Error']} x{f['Occurrences']}" for f in failures],
    }


def with_local_stack(seconds: int, users: int, out: Path) -> dict:
    from client.cli import register_digits, tenant_key
    from client.sdk import Client
    from client.stack import Stack

    stack = Stack(Path(tempfile.mkdtemp(prefix="xaiq-load-")), workers=1, api_port=0, s3_port=0, redis_port=0,
                  torch_threads=1)
    try:
        stack.start()
        register_digits(Client(stack.api_url, stack.api_key))
        return run_locust(stack.api_url, tenant_key(stack), seconds, users, out)
    finally:
        stack.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--server")
    p.add_argument("--key", default=os.environ.get("XAIQ_API_KEY", ""))
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--users", type=int, default=20)
    args = p.parse_args()
    out = Path(tempfile.mkdtemp(prefix="xaiq-locust-"))
    result = run_locust(args.server, args.key, args.seconds, args.users, out) if args.server else \
        with_local_stack(args.seconds, args.users, out)
    print(f"load, {args.users} users for {result['seconds']} s: {result['requests']} requests, "
          f"{result['errors']} errors; {result['polls_per_s']} polls/s, poll median {result['poll_median_ms']:.0f} ms, "
          f"p99 {result['poll_p99_ms']:.0f} ms (all requests p99 {result['all_p99_ms']:.0f} ms); "
          f"{result['submitted']} jobs submitted")
    (ROOT / "bench/results").mkdir(exist_ok=True)
    (ROOT / "bench/results/load.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
