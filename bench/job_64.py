"""The 64-image saliency job of the pipeline issue: end to end (HTTP -> Redis -> Celery
worker -> S3, polled) against the same units run in-process (no HTTP, no Celery) and
against the bare saliency computation.

    .venv/bin/python bench/job_64.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args, _ = ap.parse_known_args()

    from client.cli import register_digits, write_digit_samples
    from client.sdk import Client
    from client.stack import Stack

    stack = Stack(Path(tempfile.mkdtemp(prefix="xaiq-job64-")), workers=1, api_port=0, s3_port=0, api_key="bench",
                  torch_threads=1, extra_env={"XAIQ_UNIT_SIZE": "16"})
    stack.start()
    try:
        client = Client(stack.api_url, "bench")
        register_digits(client)
        paths = write_digit_samples(stack.root / "samples", 64)
        images = [(p.name, p.read_bytes()) for p in paths]

        def end_to_end() -> tuple[float, str]:
            t0 = time.perf_counter()
            job = client.submit(images, model="digits-cnn", methods={"saliency": {}})
            assert client.wait(job, poll=0.05)["status"] == "succeeded"
            return time.perf_counter() - t0, job

        end_to_end()
        runs = [end_to_end() for _ in range(args.repeats)]
        e2e = statistics.median(t for t, _ in runs)

        for k, v in stack.env(XAIQ_TORCH_THREADS="1").items():
            if k.startswith("XAIQ_"):
                os.environ[k] = v
        import numpy as np
        import torch

        from shared.settings import get_settings
        from worker import explain, images as imgs
        from worker.context import WorkerContext
        from worker.unit import run_unit

        torch.set_num_threads(1)
        get_settings.cache_clear()
        ctx = WorkerContext(get_settings())
        job = runs[0][1]

        def in_process() -> float:
            t0 = time.perf_counter()
            for unit in range(4):
                run_unit(ctx, job, unit, unit * 16, 16)
            return time.perf_counter() - t0

        in_process()
        inproc = statistics.median(in_process() for _ in range(args.repeats))
        lm = ctx.model("digits-cnn")
        x = torch.from_numpy(imgs.standardize(np.stack([imgs.decode(b, lm.info, 2**31)[0] for _, b in images]), lm.info))
        y = torch.zeros(64, dtype=torch.long)

        def compute() -> float:
            t0 = time.perf_counter()
            for chunk, labels in zip(x.split(16), y.split(16)):
                explain.run("saliency", lm.model, chunk, labels)
            return time.perf_counter() - t0

        compute()
        bare = statistics.median(compute() for _ in range(args.repeats))
    finally:
        stack.stop()
    print(f"64-image saliency job (digits-cnn, 4 units of 16, one torch thread), medians of {args.repeats}:")
    print(f"  end to end over HTTP/Redis/Celery/S3: {e2e:.2f} s")
    print(f"  the same 4 units in-process (read S3, explain, write S3): {inproc:.2f} s  ({e2e / inproc:.1f}x less)")
    print(f"  saliency computation alone: {bare * 1000:.0f} ms")


if __name__ == "__main__":
    main()
