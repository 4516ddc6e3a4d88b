"""Throughput of 2 workers against 1 on the same job (one torch thread each), through
the whole stack: HTTP -> Redis -> Celery workers -> S3.

    .venv/bin/python bench/workers_bench.py [--images 48] [--repeats 3]

Target (issue): >= 1.8x on a 2-core machine. Prints the median job time of each
configuration and their ratio, measured in this run.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def sample_images(n: int, size: int = 128) -> list[tuple[str, bytes]]:
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        y, x = rng.integers(0, img.shape[0] - 256), rng.integers(0, img.shape[1] - 256)
        crop = Image.fromarray(img[y:y + 256, x:x + 256]).resize((size, size))
        buf = io.BytesIO()
        crop.save(buf, "PNG")
        out.append((f"photo-{i}.png", buf.getvalue()))
    return out


def food11_weights() -> bytes:
    from safetensors.torch import save

    from worker.models.architectures import Food11CNN

    torch.manual_seed(0)
    return save(Food11CNN().state_dict())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    args, _ = ap.parse_known_args()  # run_all.sh passes the explainer flags to every script

    from client.sdk import Client
    from client.stack import Stack, wait_for
    from shared.messaging import make_celery
    from shared.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="xaiq-bench-"))
    stack = Stack(root, workers=1, api_port=0, s3_port=0, torch_threads=1, api_key="bench",
                  extra_env={"XAIQ_UNIT_SIZE": "4"})
    stack.start()
    try:
        client = Client(stack.api_url, "bench")
        spec = {"name": "food11-bench", "architecture": "food11-cnn",
                "input": {"channels": 3, "height": 128, "width": 128},
                "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "classes": [f"c{i}" for i in range(11)]}
        client.register_model(spec, food11_weights())
        images = sample_images(args.images)
        methods = {"saliency": {}, "smoothgrad": {"samples": 4}}

        def run_job() -> float:
            t0 = time.perf_counter()
            job = client.submit(images, model="food11-bench", methods=methods)
            state = client.wait(job, poll=0.1)
            assert state["status"] == "succeeded", state
            return time.perf_counter() - t0

        run_job()  # warm-up: the worker loads the model
        one = [run_job() for _ in range(args.repeats)]
        stack.start_worker(1)
        app = make_celery(Settings(redis_url=stack.redis_url))
        wait_for(lambda: len(app.control.ping(timeout=1.0)) >= 2, "the second worker", 90)
        run_job()  # warm-up of the second worker
        two = [run_job() for _ in range(args.repeats)]
    finally:
        stack.stop()
    m1, m2 = statistics.median(one), statistics.median(two)
    print(f"job of {args.images} images x {list(methods)} (food11-cnn 128x128, one torch thread per worker)")
    print(f"1 worker : median {m1:.2f} s  ({args.images / m1:.1f} img/s)  runs {[round(t, 2) for t in one]}")
    print(f"2 workers: median {m2:.2f} s  ({args.images / m2:.1f} img/s)  runs {[round(t, 2) for t in two]}")
    print(f"throughput ratio 2 workers / 1 worker: {m1 / m2:.2f}x (target >= 1.8x)")


if __name__ == "__main__":
    main()
