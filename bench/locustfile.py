"""Locust users of a running xaiq: each submits a small job now and then and polls its own
jobs' status (and, when one ends, its first results page). Run by `bench/load.py`:

    locust -f bench/locustfile.py --headless --host URL -u 20 -r 10 -t 60s

The key is read from XAIQ_API_KEY; the images are four real digits."""
from __future__ import annotations

import io
import json
import os
import random

from locust import HttpUser, between, task

FINAL = ("succeeded", "failed", "cancelled")


def digits() -> list[tuple[str, bytes]]:
    from sklearn.datasets import load_digits
    from PIL import Image

    out = []
    for i, img in enumerate(load_digits().images[:4]):
        buf = io.BytesIO()
        Image.fromarray((img * 255 / 16).astype("uint8")).resize((32, 32)).save(buf, "PNG")
        out.append((f"d{i}.png", buf.getvalue()))
    return out


DIGITS = digits()


class Poller(HttpUser):
    wait_time = between(0.05, 0.2)

    def on_start(self):
        self.client.headers["Authorization"] = f"Bearer {os.environ['XAIQ_API_KEY']}"
        self.jobs: list[str] = []
        self.ended: set[str] = set()

    @task(1)
    def submit(self):
        files = [("images", (n, b, "image/png")) for n, b in DIGITS]
        spec = {"model": "digits-cnn", "methods": {"saliency": {}}, "name": "load"}
        with self.client.post("/v1/jobs", files=files, data={"spec": json.dumps(spec)}, name="POST /v1/jobs",
                              catch_response=True) as r:
            if r.status_code == 202:
                self.jobs.append(r.json()["id"])
            elif r.status_code == 429:
                r.success()          # the tenant's limits at work: a clear answer, not an error
            else:
                r.failure(f"{r.status_code} {r.text[:200]}")

    @task(20)
    def poll(self):
        """The status of one of this user's last 20 jobs (a finished one too: a dashboard keeps
        polling what it shows); a job seen ending the first time also gets its first results page."""
        if not self.jobs:
            return
        job = random.choice(self.jobs[-20:])
        r = self.client.get(f"/v1/jobs/{job}", name="GET /v1/jobs/{id}")
        if r.ok and r.json()["status"] in FINAL and job not in self.ended:
            self.ended.add(job)
            self.client.get(f"/v1/jobs/{job}/results?per_page=10", name="GET /v1/jobs/{id}/results")

    @task(2)
    def list_jobs(self):
        self.client.get("/v1/jobs?limit=20", name="GET /v1/jobs")
